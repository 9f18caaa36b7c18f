"""Memory of each chapter's largest computations at ``full`` scale, estimated on CPU from the compiled programs.

Nothing runs: every computation is built from the chapter's own library calls with its
``full`` sizes (read from the chapter's ``select_scale(..., full=dict(...))`` call, so the
estimates follow the chapters), traced on ``jax.ShapeDtypeStruct`` inputs, lowered and compiled
by XLA for the CPU (``jax.jit(f).lower(...).compile().memory_analysis()``). Columns (bytes as
GiB): arguments, outputs, temporaries (XLA's buffer assignment for intermediates), and
``peak ~ arguments + outputs + temporaries - aliased``: what one device must hold while the
program runs. A GPU compile assigns buffers differently (and may fuse differently); treat the
numbers as estimates to within a small factor, good enough to tell 1 GiB from 100 GiB.

Which computation is the largest is read from each chapter (the widest network, the most seeds
or learning rates vmapped at once); ``COMPUTATIONS`` lists them with the reason.

Run: ``python benchmarks/full_memory.py [--chapters 01 09] [--scale full] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from common import print_table

GIB = 2.0**30
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- reading the sizes
def chapter_sizes(chapter: str, scale: str = "full") -> dict:
    """The sizes a chapter declares for ``scale``: the keyword ``scale`` of its ``select_scale(...)`` call.

    Read from the chapter's code cells without running them (the dict literal is evaluated with
    ``np`` in scope, as some chapters build their grids with NumPy). ValueError if the chapter
    has no such call.
    """
    from overparam.book.runner import read_notebook, resolve_chapter
    from overparam.book.scales import check_scale

    check_scale(scale)
    source = resolve_chapter(chapter, ROOT)
    code = "\n".join(c.source for c in read_notebook(source).cells if c.cell_type == "code")
    tree = ast.parse("\n".join(line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "select_scale":
            for kw in node.keywords:
                if kw.arg == scale:
                    return eval(compile(ast.Expression(kw.value), source.name, "eval"), {"np": np})  # noqa: S307
    raise ValueError(f"chapter {source.stem} has no select_scale(..., {scale}=...) call")


# --------------------------------------------------------------------------- abstract inputs
def f32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def f64(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.float64)


def keys(n: int):
    """Abstract (n,) typed PRNG keys."""
    return jax.eval_shape(lambda: jax.random.split(jax.random.key(0), n))


def key():
    return jax.eval_shape(lambda: jax.random.key(0))


def abstract(fn, *args):
    """Shapes of ``fn(*args)`` (e.g. an init) without computing it."""
    return jax.eval_shape(fn, *args)


# --------------------------------------------------------------------------- the computations
# Each entry: chapter -> function(cfg) returning [(name, fn, args, x64)], fn(*args) the computation.

def ch01(c):
    from overparam.experiments import transition_to_linearity as tl

    m, deep, b = max(c["widths"]), c["deep_wide_max"], c["batch_size"]
    d, s, n, nt, ni, steps = c["d"], c["n_seeds"], c["n_train"], c["n_test"], c["n_hess_inputs"], c["num_steps"]
    # the chapter's batch_size: None vmaps every seed and every per-seed run at once; an int runs the seeds in
    # sequence and b of a seed's Lanczos runs (one per input) or kernel columns at a time
    seeds, per = (f"{s} seeds vmapped", "") if b is None else (f"{s} seeds in sequence", f", {b} at a time")
    train = (keys(s), f32(n, d), f32(n, 1), f32(nt, d), f32())
    return [
        (f"train_vs_linear, width {m}, {seeds}, {steps} GD steps",
         lambda k, x, y, xt, a: tl._train_vs_linear((d, m, 1), "relu", "ntk", steps, False, b, k, x, y, xt, a),
         train, False),
        (f"train_vs_linear, frozen pattern, width {m}, {seeds}, {n} kernel columns per seed{per}, {steps} GD steps",
         lambda k, x, y, xt, a: tl._train_vs_linear((d, m, 1), "relu", "ntk", steps, True, b, k, x, y, xt, a),
         train, False),
        (f"nonlinear_output_sweep, width {m}, {seeds}, {ni} Lanczos runs and {n} kernel columns per seed{per}, "
         f"{steps} GD steps",
         lambda k, x, y, xh: tl._nonlinear_output_sweep((d, m, 1), steps, 30, b, k, x, y, xh),
         (keys(s), f32(n, d), f32(n, 1), f32(ni, d)), False),
        (f"hessian_norm_at_init, widths (d, {deep}, {deep}, {deep}, 1), {seeds}, {ni} Lanczos runs per seed{per}",
         lambda k, x: tl._hessian_norm_at_init((d, deep, deep, deep, 1), "tanh", "ntk", 30, b, k, x),
         (keys(s), f32(ni, d)), False),
        (f"hessian_norm_skip_bottleneck, widths (d, {deep}, {c['bottleneck']}, {deep}, 1) + skip, {seeds}, "
         f"{ni} Lanczos runs per seed{per}",
         lambda k, x: tl._hessian_norm_skip_bottleneck(d, deep, c["bottleneck"], 30, b, k, x),
         (keys(s), f32(ni, d)), False),
    ]


def ch02(c):
    from overparam.experiments import trained_ensembles as te
    from overparam.kernels import analytic
    from overparam.models import MLPSpec

    m, dm = max(c["mc_widths"]), max(c["digits_widths"])
    d_digits, classes, regimes = 64, 10, 4
    widths = (d_digits,) + (dm,) * (c["train_depth"] - 1) + (classes,)
    spec = MLPSpec((c["d"],) + (m,) * (c["depth"] - 1) + (1,), "relu", "ntk", 1.0, 0.0)
    return [
        (f"digits ensemble, width {dm}, {c['digits_seeds']} seeds x {regimes} regimes, {c['digits_steps']} GD steps",
         lambda k, x, y, xt, lr, wd, ce: te._train_ensemble(k, x, y, xt, lr, wd, ce, widths=widths, activation="relu",
                                                            sigma_w=1.0, sigma_b=0.0, num_steps=c["digits_steps"]),
         (keys(c["digits_seeds"]), f32(c["digits_train"], d_digits), f32(c["digits_train"], classes),
          f32(c["digits_test"], d_digits), f32(regimes), f32(regimes), f32(regimes)), False),
        (f"Monte Carlo NTK, width {m}, depth {c['depth']}, {c['mc_seeds']} seeds (lax.map)",
         lambda k, x: analytic._mlp_kernels(k, x, None, spec),
         (keys(c["mc_seeds"]), f32(c["n_points"], c["d"])), False),
    ]


def ch03(c):
    from overparam.experiments import catapult_phase as cat
    from overparam.models import MLPSpec

    spec = MLPSpec.two_layer(c["d"], c["width"], "relu", "ntk")
    p0 = abstract(spec.init_ensemble, keys(c["net_seeds"]))
    e = len(c["multiples"])
    return [
        (f"NQM lr sweep, width {c['width']}, {c['net_seeds']} inits x {e} lrs vmapped, {c['num_steps']} GD steps",
         lambda p, x, y, xt, yt, a: cat.init_lr_sweep(spec, p, x, y, a, c["num_steps"], order=2, x_test=xt, y_test=yt),
         (p0, f32(c["n_train"], c["d"]), f32(c["n_train"], 1), f32(c["n_test"], c["d"]), f32(c["n_test"], 1), f32(e)),
         False),
    ]


def ch04(c):
    from overparam.experiments import agop as ag
    from overparam.experiments import sgd_spikes as spikes
    from overparam.kernels.empirical import ntk_layerwise
    from overparam.models import MLPSpec

    spec = MLPSpec((c["d"], c["width"], 1), "relu", "ntk")
    p0 = abstract(spec.init_ensemble, keys(c["seeds"]))
    b = max(c["batch_sizes"])
    kernel_fn = lambda p, inputs: ntk_layerwise(spec, p, inputs)  # noqa: E731
    g = ag.target_agop("x1x2", c["d"])

    def run(p, x, y, lr, k, xp, yp, xa):
        observe = lambda q: dict(align=ag.agop_alignment(ag.agop(spec, q, xa), g))  # noqa: E731
        return spikes.sgd_trajectories(spec, p, x, y, lr, k, b, c["steps"], xp, yp, k_top=1, observe=observe,
                                       kernel_fn=kernel_fn)

    return [
        (f"SGD trajectories, batch {b}, width {c['width']}, {c['seeds']} seeds, {c['steps']} steps with probes",
         run, (p0, f32(c["n_train"], c["d"]), f32(c["n_train"], 1), f32(), keys(c["seeds"]),
               f32(c["n_probe"], c["d"]), f32(c["n_probe"], 1), f32(c["n_agop"], c["d"])), False),
    ]


def ch05(c):
    from overparam.experiments import binary_weights as bn
    from overparam.experiments import spiky_smooth as act

    s, n, dim = c["gap_seeds"], c["gap_n"], c["gap_dim"]
    p0 = abstract(jax.vmap(lambda k: bn.init_two_layer(k, dim, c["gap_width"], True)), keys(s))
    train = jax.vmap(lambda p, x, y, k: bn._train_scan(p, x, y, jnp.float32(c["gap_lr"]), k, binary=True,
                                                       num_steps=c["gap_steps"]))
    big = max(c["spike_ns"])
    return [
        (f"binary two-layer net, width {c['gap_width']}, {s} seeds vmapped, {c['gap_steps']} GD steps",
         train, (p0, f32(s, n, dim), f32(s, n), keys(s)), False),
        (f"kernel regression (float64), n = {big}, {c['spike_test']} test points",
         act._kernel_regression, (f64(big, big), f64(big + c["spike_test"], big), f64(big), f64()), True),
    ]


def ch06(c):
    from overparam.experiments import parallel_nets as pn
    import optax

    x, y = f32(c["n_train"], 1), f32(c["n_train"], 1)
    out = []
    k0 = jax.random.key(0)
    parallel = lambda: pn.parallel_init(k0, c["num_subnets"], c["width"], c["depth"], knots=(-1.0, 1.0))  # noqa: E731
    resnet = lambda: pn.resnet_init(k0, c["res_blocks"], c["width"], c["depth"])  # noqa: E731
    for label, init, apply_fn, lams, steps in [
            (f"{c['num_subnets']} parallel subnets", parallel, pn.parallel_apply, c["lams"], c["steps"]),
            (f"ResNet of {c['res_blocks']} blocks", resnet, pn.resnet_apply, c["res_lams"], c["res_steps"])]:
        opt = optax.adam(optax.cosine_decay_schedule(c["lr"], steps, alpha=1e-2))
        lam = jnp.array(lams)

        def sweep(p, x, y, apply_fn=apply_fn, opt=opt, lam=lam, steps=steps):
            with jax.ensure_compile_time_eval():  # the sweep checks its (concrete) decays with a Python bool
                return pn.train_weight_decay_sweep(apply_fn, p, x, y, lam, opt, steps, record_every=steps // 20)

        out.append((f"weight-decay sweep, {label}, {len(lams)} decays vmapped, {steps} Adam steps",
                    sweep, (abstract(init), x, y), False))
    return out


def ch07(c):
    from overparam.experiments import fisher
    from overparam.experiments import natural_gradient as ng
    from overparam.models import MLPSpec

    w = c["ngd_width"]
    spec = MLPSpec((c["ngd_d"], w, w, 1), "relu", "ntk", use_bias=False)
    m, s = max(c["fisher_widths"]), c["fisher_seeds"]
    d, n = m, max(2, round(0.5 * m))
    net = (d, m, m, 1)
    fisher_spec = fisher.normalized_mlp(net, "none")
    apply_fn, per_example, output_map = fisher.fisher_setup(net, "bn_middle")
    return [
        (f"natural gradient (exact), width {w}, N = {c['ngd_N']}, {c['ngd_steps']} steps",
         lambda p, x, y, lr: ng._train_preconditioned(spec, p, x, y, lr, 1e-8, method="ngd", num_steps=c["ngd_steps"]),
         (abstract(spec.init, key()), f32(c["ngd_N"], c["ngd_d"]), f32(c["ngd_N"], 1), f32()), False),
        (f"Fisher eigenvalues (batch norm, whole-batch Jacobians), width {m}, N = {n}, {s} seeds",
         lambda p, x: fisher.fisher_eig_stats_batch(apply_fn, p, x, per_example, output_map),
         (abstract(fisher_spec.init_ensemble, keys(s)), f32(s, n, d)), False),
    ]


def ch08(c):
    from overparam.experiments import mean_field as mf

    n_max, runs = max(c["mf_widths"]), 4 * c["mf_groups"]
    teacher = abstract(lambda: mf.teacher_init(jax.random.key(0), c["mf_d"], c["mf_k"]))
    p0 = abstract(lambda k: mf.student_init(k, c["mf_d"], n_max, n_max), keys(runs))
    steps = int(round(c["mf_horizon"] / c["mf_eta0"]))
    train = jax.vmap(lambda p, t, k: mf.online_sgd(p, t, k, c["mf_eta0"], n_max, steps, batch_size=c["mf_batch"]),
                     (0, None, 0))
    return [
        (f"mean-field online SGD, N = {n_max}, {runs} runs vmapped, {steps} steps",
         train, (p0, teacher, keys(runs)), False),
    ]


def ch09(c):
    from overparam.experiments import distillation as dist

    rhos = jnp.linspace(0.0, 1.0, c["rhos"])
    return [
        (f"distillation sweep, width {c['width']}, {c['trials']} trials vmapped",
         lambda k: dist.distillation_sweep(k, rhos, c["trials"], c["n_distill"], 500, 8, c["width"], 1e-3, 0.8),
         (key(),), False),
    ]


COMPUTATIONS = {"01": ch01, "02": ch02, "03": ch03, "04": ch04, "05": ch05, "06": ch06, "07": ch07, "08": ch08,
                "09": ch09}


def memory_of(fn, args, x64: bool = False) -> dict:
    """XLA's memory analysis of ``jax.jit(fn)`` compiled for ``args`` (abstract): bytes and compile seconds."""
    t0 = time.perf_counter()
    with jax.enable_x64(x64):
        compiled = jax.jit(fn).lower(*args).compile()
    m = compiled.memory_analysis()
    row = dict(arguments=m.argument_size_in_bytes, outputs=m.output_size_in_bytes, temps=m.temp_size_in_bytes,
               aliased=m.alias_size_in_bytes, compile_s=time.perf_counter() - t0)
    row["peak"] = row["arguments"] + row["outputs"] + row["temps"] - row["aliased"]
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="+", default=list(COMPUTATIONS))
    parser.add_argument("--scale", default="full", help="full (default); smoke or ci to check the script quickly")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    unknown = [ch for ch in args.chapters if ch.zfill(2) not in COMPUTATIONS]
    if unknown:
        raise SystemExit(f"unknown chapter(s) {unknown}; known: {', '.join(COMPUTATIONS)}")
    print(f"memory analysis of the compiled programs on {jax.devices()[0].platform} (jax {jax.__version__}), "
          f"scale {args.scale}; GiB", flush=True)
    rows = []
    for ch in (c.zfill(2) for c in args.chapters):
        cfg = chapter_sizes(ch, args.scale)
        for name, fn, fn_args, x64 in COMPUTATIONS[ch](cfg):
            try:
                row = memory_of(fn, fn_args, x64)
            except Exception as exc:  # report and go on: one chapter's failure must not hide the others
                row = dict(error=f"{type(exc).__name__}: {str(exc)[:200]}")
            row.update(chapter=ch, computation=name)
            rows.append(row)
            shown = {k: (v / GIB if k in ("arguments", "outputs", "temps", "peak") else v) for k, v in row.items()}
            print(f"  {ch} {name}: " + (row.get("error") or f"peak {shown['peak']:.2f} GiB "
                                                            f"(compiled in {row['compile_s']:.1f} s)"), flush=True)
    table = [{k: (v / GIB if k in ("arguments", "outputs", "temps", "peak") and v is not None else v)
              for k, v in r.items()} for r in rows]
    print()
    print_table(table, [("chapter", "chapter", ""), ("computation", "computation", ""),
                        ("arguments", "arguments GiB", ".3f"), ("outputs", "outputs GiB", ".3f"),
                        ("temps", "temps GiB", ".3f"), ("peak", "peak GiB", ".3f")])
    if args.json:
        args.json.write_text(json.dumps(dict(scale=args.scale, rows=rows), indent=2))
    return rows


if __name__ == "__main__":
    sys.exit(0 if all("error" not in r for r in main()) else 1)
