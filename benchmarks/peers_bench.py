"""Side-by-side with neural-tangents: empirical NTK and analytic ReLU NNGP/NTK, same shapes, inputs and weights.

neural-tangents 0.6.5 does not import with the book's JAX, so this script builds a throw-away
virtual environment ``_build/peers-venv`` with the versions pinned in
``benchmarks/peers/constraints.txt`` (on first use, or with ``--fresh``; it pulls TensorFlow,
~1 GB, ~1.5 min from the package index), writes each case (inputs ``x.npy``, our MLP's
weights ``params.npz``, our outputs ``f.npy``) under ``_build/peers/``, runs
``benchmarks/peers/nt_side.py`` there, and prints one table.

Network: ``MLP((d_in, width, width, 1), "relu", "ntk", sigma_w, sigma_b)`` = stax
``Dense(width, W_std=sigma_w, b_std=sigma_b, parameterization="ntk")`` + ``Relu`` (x2) +
``Dense(1)``, fed our parameters (W as is, b as (1, n)); float32; N inputs, x1 = x2.
Rows: our layer-wise and Jacobian-contraction NTK, neural-tangents' three
``empirical_ntk_fn`` implementations, and the analytic (NNGP, NTK) of the infinite network
(ours: ``kernels_analytic.fc_kernels``; theirs: stax ``kernel_fn``). 'vs ours' divides by our
method of the same kind (layer-wise for empirical rows, ``fc_kernels`` for analytic ones);
'rel diff' is max |K - K_ref| / max |K_ref| (NTK; the NNGP's in its own column) with K_ref our
float32 layer-wise kernel for the empirical rows and our ``fc_kernels`` in float64 for the
analytic ones: in float32 both libraries lose ~1e-4 on the diagonal of the ReLU NTK, where
arccos is evaluated at cos = 1 - eps, and agree to ~1e-7 off it.

FLOP counts (matrix products, ``ntk_bench``): Jacobian contraction ~ 6N^2 W, NTK-vector
products ~ 4N^2 W, layer-wise ~ 4Nn^2 + 6N^2 n; structured derivatives are charged the
layer-wise count (the same structure, a lower bound on what it executes). The analytic
kernels are charged the input Gram 2N^2 d only: the rest is elementwise (arccos, sqrt) on
N^2 entries per layer, so their fraction of the matmul peak is small by construction.
Both sides run one after the other on the same machine; the peak is measured on our side.
The issue's target: layer-wise >= 50x faster than Jacobian contraction at width 1024,
N = 256 and at width 4096, and at least twice as fast as neural-tangents' fastest implementation at both
widths. At width 4096 the Jacobian rows need the whole Jacobian (52 GB at N = 256), so the default
wider case is N = 64. Run: ``python benchmarks/peers_bench.py [--fresh] [--shapes 1024x256 4096x64]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common import fraction_of_peak, median_time, print_table, report_machine
from ntk_bench import ntk_jacobian_flops, ntk_layerwise_flops, ntk_vjp_jvp_flops
from overparam.kernels.analytic import fc_kernels
from overparam.models import as_function, MLP, MLPSpec, param_count
from overparam.kernels.empirical import ntk_jacobian, ntk_layerwise

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "_build" / "peers-venv"
CASES = ROOT / "_build" / "peers"
CONSTRAINTS = ROOT / "benchmarks" / "peers" / "constraints.txt"
NT_SIDE = ROOT / "benchmarks" / "peers" / "nt_side.py"
REQUIREMENTS = ["neural-tangents==0.6.5", "jax==0.4.23", "jaxlib==0.4.23"]
SIGMA_W, SIGMA_B = 1.4, 0.1

COLUMNS = [
    ("method", "method", ""), ("shape", "shape", ""), ("seconds", "median s", ".4f"), ("ratio", "vs ours", ".2f"),
    ("peak", "frac. of peak", ".3f"), ("rel_diff", "rel diff", ".1e"), ("rel_diff_nngp", "rel diff NNGP", ".1e"),
]


def ensure_venv(fresh: bool) -> tuple[Path | None, str]:
    """(python of the peers venv, message); python is None when the install failed (message: pip's error)."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".installed"
    key = hashlib.sha256(CONSTRAINTS.read_bytes() + " ".join(REQUIREMENTS).encode()).hexdigest()
    if not fresh and stamp.exists() and stamp.read_text() == key:
        return python, f"reusing {VENV.relative_to(ROOT)}"
    shutil.rmtree(VENV, ignore_errors=True)
    print(f"creating {VENV.relative_to(ROOT)}: pip install {' '.join(REQUIREMENTS)} -c {CONSTRAINTS.relative_to(ROOT)}",
          flush=True)
    steps = [[sys.executable, "-m", "venv", str(VENV)],
             [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS, "-c", str(CONSTRAINTS)]]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
            return None, f"FAILED ({' '.join(cmd[:4])} ... exit {done.returncode}):\n{tail}"
    stamp.write_text(key)
    return python, "installed"


def write_case(width: int, n: int, d_in: int, peak: float, repeats: int) -> tuple[Path, list[dict], dict]:
    """Save inputs/weights/outputs for nt_side.py and time our methods: (folder, rows, our kernels)."""
    widths = (d_in, width, width, 1)
    model = MLPSpec(widths, "relu", "ntk", sigma_w=SIGMA_W, sigma_b=SIGMA_B).module(0)
    apply_fn, params = as_function(model)
    x = jax.random.normal(jax.random.key(1), (n, d_in))
    case = CASES / f"w{width}_n{n}"
    case.mkdir(parents=True, exist_ok=True)
    np.save(case / "x.npy", np.asarray(x))
    np.save(case / "f.npy", np.asarray(model(x)))
    np.savez(case / "params.npz", **{f"{kind}{l}": np.asarray(getattr(layer, kind)[...])
                                     for l, layer in enumerate(model.layers) for kind in ("w", "b")})
    (case / "config.json").write_text(json.dumps(dict(widths=widths, sigma_w=SIGMA_W, sigma_b=SIGMA_B)))

    shape = f"w={width} N={n}"
    p = param_count(params)
    layerwise = jax.jit(lambda p, x: ntk_layerwise(model.spec, p, x))
    jacobian = jax.jit(lambda p, x: ntk_jacobian(apply_fn, p, x))
    analytic = jax.jit(lambda x: fc_kernels(x, None, 3, "relu", SIGMA_W, SIGMA_B))
    kernels = {"ntk": np.asarray(layerwise(params, x)), "jacobian": np.asarray(jacobian(params, x))}
    kernels["nngp_analytic"], kernels["ntk_analytic"] = map(np.asarray, analytic(x))
    with jax.enable_x64(True):
        exact = fc_kernels(jnp.asarray(x, jnp.float64), None, 3, "relu", SIGMA_W, SIGMA_B)
        kernels["nngp_float64"], kernels["ntk_float64"] = map(np.asarray, exact)
    rows = [
        dict(method="ours layer-wise", kind="empirical", shape=shape, flops=ntk_layerwise_flops(widths, n),
             seconds=median_time(lambda: layerwise(params, x), repeats), kernel=kernels["ntk"]),
        dict(method="ours jacobian contraction", kind="empirical", shape=shape, flops=ntk_jacobian_flops(widths, n, p),
             seconds=median_time(lambda: jacobian(params, x), max(1, repeats // 2)), kernel=kernels["jacobian"]),
        dict(method="ours fc_kernels (analytic)", kind="analytic", shape=shape, flops=2.0 * n * n * d_in,
             seconds=median_time(lambda: analytic(x), repeats),
             kernel=kernels["ntk_analytic"], nngp=kernels["nngp_analytic"]),
        dict(method="reference: fc_kernels float64", kind="float64", shape=shape, flops=0.0, seconds=None,
             kernel=kernels["ntk_float64"], nngp=kernels["nngp_float64"]),
    ]
    return case, rows, dict(widths=widths, n=n, params=p)


def nt_rows(python: Path, case: Path, shape_info: dict, repeats: int) -> tuple[list[dict], dict | str]:
    """Run nt_side.py in the peers venv on one case: (rows, its results json) or ([], error text)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    done = subprocess.run([str(python), str(NT_SIDE), str(case), "--repeats", str(repeats)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        return [], "nt_side.py failed:\n" + "\n".join((done.stdout + done.stderr).strip().splitlines()[-30:])
    results = json.loads((case / "nt_results.json").read_text())
    widths, n, p = shape_info["widths"], shape_info["n"], shape_info["params"]
    flops = {"nt jacobian contraction": ntk_jacobian_flops(widths, n, p),
             "nt ntk-vector products": ntk_vjp_jvp_flops(widths, n),
             "nt structured derivatives": ntk_layerwise_flops(widths, n)}
    shape = f"w={widths[1]} N={n}"
    rows = [dict(method=name, kind="empirical", shape=shape, flops=flops[name], seconds=results["seconds"][name],
                 kernel=np.load(case / f"nt_{name.replace(' ', '_')}.npy")) for name in flops
            if name not in results.get("errors", {})]
    rows.append(dict(method="nt stax kernel_fn (analytic)", kind="analytic", shape=shape, flops=2.0 * n * n * widths[0],
                     seconds=results["seconds"]["nt kernel_fn"], kernel=np.load(case / "nt_analytic_ntk.npy"),
                     nngp=np.load(case / "nt_analytic_nngp.npy")))
    return rows, results


def rel_diff(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


def finish(rows: list[dict], peak: float) -> list[dict]:
    """Fill ratio (to our row of the same kind), fraction of peak and kernel differences; drop the float64 row."""
    ours = {r["kind"]: r for r in rows if r["method"].startswith("ours") and "jacobian" not in r["method"]}
    exact = next(r for r in rows if r["kind"] == "float64")
    rows = [r for r in rows if r is not exact]
    for r in rows:
        ref = ours["empirical"] if r["kind"] == "empirical" else exact
        r["ratio"] = r["seconds"] / ours[r["kind"]]["seconds"]
        r["peak"] = fraction_of_peak(r["flops"], r["seconds"], peak)
        r["rel_diff"] = rel_diff(r["kernel"], ref["kernel"])
        r["rel_diff_nngp"] = rel_diff(r["nngp"], ref["nngp"]) if "nngp" in r else None
    return rows


def parse_shape(text: str) -> tuple[int, int]:
    try:
        width, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r}: expected WIDTHxN, e.g. 1024x256") from None
    return width, n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(1024, 256), (4096, 64)])
    parser.add_argument("--d-in", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--fresh", action="store_true", help="rebuild the peers venv from scratch")
    args = parser.parse_args()
    python, message = ensure_venv(args.fresh)
    print(f"peers venv: {message}", flush=True)
    peak = report_machine(f"MLP (d_in={args.d_in}, width, width, 1), relu, ntk, sigma_w={SIGMA_W}, sigma_b={SIGMA_B}")
    table, notes = [], []
    for width, n in args.shapes:
        case, rows, info = write_case(width, n, args.d_in, peak, args.repeats)
        if python is not None:
            theirs, results = nt_rows(python, case, info, args.repeats)
            if theirs:
                rows += theirs
                notes.append(f"w={width} N={n}: neural-tangents {results['neural_tangents']} on jax {results['jax']}; "
                             f"outputs of its network with our weights differ from ours by {results['output_rel_diff']:.1e}")
                notes += [f"w={width} N={n}: {name} FAILED: {error}" for name, error in results["errors"].items()]
            else:
                notes.append(f"w={width} N={n}: {results}")
        table += finish(rows, peak)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print_table(table, COLUMNS)
    for note in notes:
        print(note)
    for width, n in args.shapes:
        shape = f"w={width} N={n}"
        t = {r["method"]: r["seconds"] for r in table if r["shape"] == shape}
        nt_times = {k: v for k, v in t.items() if k.startswith("nt ") and "analytic" not in k}
        line = f"{shape}: jacobian / layer-wise = {t['ours jacobian contraction'] / t['ours layer-wise']:.0f}x (target >= 50x)"
        if nt_times:
            fastest = min(nt_times, key=nt_times.get)
            line += (f"; fastest neural-tangents ({fastest}) / layer-wise = "
                     f"{nt_times[fastest] / t['ours layer-wise']:.2f}x (target >= 2)")
        print(line)


if __name__ == "__main__":
    main()
