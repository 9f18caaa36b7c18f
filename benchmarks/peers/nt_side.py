"""The neural-tangents side of ``benchmarks/peers_bench.py``; runs in its own virtual environment.

Reads a case folder written by peers_bench (config.json, x.npy, params.npz, f.npy), builds
the same network with ``stax`` (ntk parameterization, W_std = sigma_w, b_std = sigma_b), loads
OUR parameters into its layout, and writes ``nt_results.json`` (median seconds per method) and
one kernel ``nt_<name>.npy`` per method into the folder. Imports only numpy, jax,
neural-tangents and ``benchmarks/common.py`` (no ``overparam``: it is not installed here).
Run: ``<peers-venv>/bin/python benchmarks/peers/nt_side.py CASE_DIR [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import median_time  # noqa: E402

import neural_tangents as nt  # noqa: E402
from neural_tangents import stax  # noqa: E402

IMPLEMENTATIONS = {
    "nt jacobian contraction": nt.NtkImplementation.JACOBIAN_CONTRACTION,
    "nt ntk-vector products": nt.NtkImplementation.NTK_VECTOR_PRODUCTS,
    "nt structured derivatives": nt.NtkImplementation.STRUCTURED_DERIVATIVES,
}


def stax_network(widths, sigma_w, sigma_b):
    """stax.serial of Dense(ntk parameterization) + Relu, matching ``MLP(widths, "relu", "ntk", sigma_w, sigma_b)``."""
    layers = []
    for l, n_out in enumerate(widths[1:]):
        layers.append(stax.Dense(n_out, W_std=sigma_w, b_std=sigma_b, parameterization="ntk"))
        if l < len(widths) - 2:
            layers.append(stax.Relu())
    return stax.serial(*layers)


def our_params_in_stax_layout(arrays, widths, init_fn, input_shape):
    """[(W_1, b_1), (), (W_2, b_2), (), ...]: W (n_in, n_out) as ours, b reshaped to (1, n_out)."""
    params = []
    for l in range(len(widths) - 1):
        params.append((jnp.asarray(arrays[f"w{l}"]), jnp.asarray(arrays[f"b{l}"]).reshape(1, -1)))
        if l < len(widths) - 2:
            params.append(())
    _, reference = init_fn(jax.random.PRNGKey(0), input_shape)
    same = jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(reference) and all(
        a.shape == b.shape for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(reference)))
    if not same:
        raise ValueError(f"our params do not match stax's layout {jax.tree_util.tree_map(jnp.shape, reference)}")
    return params


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    config = json.loads((args.case / "config.json").read_text())
    widths, sigma_w, sigma_b = tuple(config["widths"]), config["sigma_w"], config["sigma_b"]
    x = jnp.asarray(np.load(args.case / "x.npy"))
    init_fn, apply_fn, kernel_fn = stax_network(widths, sigma_w, sigma_b)
    params = our_params_in_stax_layout(np.load(args.case / "params.npz"), widths, init_fn, x.shape)

    ours = np.load(args.case / "f.npy")
    results = {"jax": jax.__version__, "neural_tangents": nt.__version__, "seconds": {},
               "output_rel_diff": float(np.abs(np.asarray(apply_fn(params, x)) - ours).max() / np.abs(ours).max())}
    slow = max(1, args.repeats // 2)
    results["errors"] = {}
    for name, implementation in IMPLEMENTATIONS.items():
        ntk_fn = jax.jit(nt.empirical_ntk_fn(apply_fn, trace_axes=(-1,), vmap_axes=0, implementation=implementation))
        try:
            results["seconds"][name] = median_time(lambda: ntk_fn(x, None, params),
                                                   args.repeats if "structured" in name else slow)
        except Exception as error:  # an implementation that breaks on this JAX: report it, time the others
            results["errors"][name] = f"{type(error).__name__}: {error}".splitlines()[0][:300]
            continue
        np.save(args.case / f"nt_{name.replace(' ', '_')}.npy", np.asarray(ntk_fn(x, None, params)))

    analytic = jax.jit(lambda x: kernel_fn(x, None, ("nngp", "ntk")))
    results["seconds"]["nt kernel_fn"] = median_time(lambda: analytic(x), args.repeats)
    nngp, ntk = analytic(x)
    np.save(args.case / "nt_analytic_nngp.npy", np.asarray(nngp))
    np.save(args.case / "nt_analytic_ntk.npy", np.asarray(ntk))
    (args.case / "nt_results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
