"""The benchmark scripts' helpers: analytic FLOP counts (checked against XLA's own count), compile counting."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from common import (count_compilations, forward_flops, fraction_of_peak, gradient_flops, hvp_flops,  # noqa: E402
                    weight_count, xla_flops)
from hessian_bench import lanczos_flops  # noqa: E402
from ntk_bench import ntk_jacobian_flops, ntk_layerwise_flops, ntk_vjp_jvp_flops  # noqa: E402
from overparam.curvature import hvp  # noqa: E402
from overparam.models import as_function, MLPSpec, param_count  # noqa: E402
from overparam.kernels.empirical import ntk_jacobian, ntk_layerwise, ntk_vjp_jvp  # noqa: E402
from overparam.training import full_batch_loss  # noqa: E402
from peers_bench import parse_shape  # noqa: E402

WIDTHS, N = (16, 128, 128, 1), 32


@pytest.fixture(scope="module")
def net():
    model = MLPSpec(WIDTHS, "relu", "ntk", sigma_b=0.1).module(0)
    apply_fn, params = as_function(model)
    x = jax.random.normal(jax.random.key(1), (N, WIDTHS[0]))
    return model, apply_fn, params, x


def test_weight_count():
    assert weight_count((3, 4, 2)) == (3 * 4 + 4 * 2, 12)
    with pytest.raises(ValueError, match="widths"):
        weight_count((3,))


def _check(analytic, jitted, *args):
    measured = xla_flops(jitted, *args)
    if measured is None:
        pytest.skip("XLA cost analysis unavailable on this backend")
    # the analytic counts are matrix products only; XLA adds the elementwise ops (a few %)
    assert 0.9 * measured <= analytic <= 1.02 * measured, (analytic, measured)


def test_ntk_flop_counts_match_xla(net):
    model, apply_fn, params, x = net
    _check(ntk_layerwise_flops(WIDTHS, N), jax.jit(lambda p, x: ntk_layerwise(model.spec, p, x)), params, x)
    _check(ntk_jacobian_flops(WIDTHS, N, param_count(params)), jax.jit(lambda p, x: ntk_jacobian(apply_fn, p, x)),
           params, x)
    _check(ntk_vjp_jvp_flops(WIDTHS, N), jax.jit(lambda p, x: ntk_vjp_jvp(apply_fn, p, x)), params, x)


def test_training_and_curvature_flop_counts_match_xla(net):
    _, apply_fn, params, x = net
    loss = full_batch_loss(apply_fn, x, jnp.zeros((N, 1)))
    _check(forward_flops(WIDTHS, N), jax.jit(apply_fn), params, x)
    _check(gradient_flops(WIDTHS, N), jax.jit(jax.grad(loss)), params)
    # hvp_flops is for smooth activations (relu's phi'' = 0 lets XLA drop one product)
    apply_fn, params = as_function(MLPSpec(WIDTHS, "tanh", "ntk", sigma_b=0.1).module(0))
    loss = full_batch_loss(apply_fn, x, jnp.zeros((N, 1)))
    tangent = jax.tree.map(lambda a: 0.5 * a + 1.0, params)  # not params itself: XLA would share the products
    _check(hvp_flops(WIDTHS, N), jax.jit(lambda p, v: hvp(loss, p, v)), params, tangent)
    assert lanczos_flops(WIDTHS, N, 100, num_iters=10) == 10 * (hvp_flops(WIDTHS, N) + 8 * 11 * 100)


def test_fraction_of_peak():
    assert fraction_of_peak(2e9, 1.0, 4.0) == pytest.approx(0.5)
    assert fraction_of_peak(2e9, None, 4.0) is None


def test_count_compilations_sees_one_compile_per_shape():
    fn = jax.jit(lambda a, lr: a * lr)
    a4, a8 = jnp.ones(4), jnp.ones(8)
    lr1, lr2 = jnp.asarray(0.1), jnp.asarray(0.2)
    with count_compilations() as first:
        fn(a4, lr1).block_until_ready()
    with count_compilations() as again:
        fn(a4, lr2).block_until_ready()
    with count_compilations() as new_shape:
        fn(a8, lr1).block_until_ready()
    assert (first["n"], again["n"], new_shape["n"]) == (1, 0, 1)


def test_parse_shape():
    assert parse_shape("1024x256") == (1024, 256)
    with pytest.raises(Exception, match="WIDTHxN"):
        parse_shape("1024")


def test_jax_events_log_counts_each_compile(tmp_path):
    """A process started with the sitecustomize logs one backend compile per new shape, none for a repeat."""
    import subprocess
    import textwrap

    import jax_events

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(jax_events.sitecustomize_source())
    script = textwrap.dedent("""
        import numpy as np, jax
        double = jax.jit(lambda a: 2 * a)
        double(np.ones(3)); double(np.ones(3)); double(np.ones(4))
    """)

    def run(log, cache):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               jax_events.EVENTS_ENV: str(log), jax_events.NO_CACHE_ENV: "0" if cache else "1",
               "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
        subprocess.run([sys.executable, "-c", script], env=env, check=True)
        return [line.split("\t") for line in log.read_text().splitlines()], jax_events.summarize(log)

    lines, s = run(tmp_path / "cold.log", cache=False)
    assert [kind for kind, _, name in lines if "lambda" in name] == ["trace", "lower", "backend"] * 2
    assert s["compilations"] == s["backend_events"] == 2 and s["cache_hits"] == 0
    assert s["compile_s"] == pytest.approx(sum(float(secs) for _, secs, _ in lines))
    assert not (tmp_path / "cache").exists()  # the cache was off
    run(tmp_path / "fill.log", cache=True)
    _, warm = run(tmp_path / "warm.log", cache=True)  # the same two programs, read from the persistent cache
    assert warm["backend_events"] == warm["cache_hits"] == 2 and warm["compilations"] == 0
    assert jax_events.summarize(tmp_path / "absent.log")["compilations"] == 0


@pytest.mark.slow
def test_chapters_bench_counts_one_chapter_at_smoke(tmp_path):
    from chapters_bench import bench_chapter

    row = bench_chapter("02", "smoke", workdir=tmp_path)
    s = row["summary"]
    assert row["status"] == "ok", row["error"]
    assert row["claims_total"] > 0
    assert s["traces"] > 0 and s["lowerings"] >= s["backend_events"] > 0
    assert row["compilations"] == s["backend_events"] - s["cache_hits"] > 0  # cache off: every backend event compiles
    assert s["cache_hits"] == 0
    assert row["compile_s"] == pytest.approx(row["trace_s"] + row["lower_s"] + row["backend_s"])
    assert 0 < row["compile_s"] < row["cells_s"] < row["wall_s"] and 0 < row["notebook_s"] < row["cells_s"]
    assert row["run_s"] == pytest.approx(row["cells_s"] - row["compile_s"])
    import json
    results = json.loads((tmp_path / "runs" / "smoke" / "results" / "02.json").read_text())
    assert len(results["claims"]) == row["claims_total"] and results["wall_time_s"] == row["notebook_s"]


def test_step_matmul_shapes_add_up_to_the_flop_counts():
    from training_bench import forward_matmul_shapes, step_matmul_shapes

    flops = lambda shapes: sum(2 * m * k * n for m, k, n in shapes)
    assert flops(step_matmul_shapes(WIDTHS, N)) == gradient_flops(WIDTHS, N)
    assert flops(forward_matmul_shapes(WIDTHS, N)) == forward_flops(WIDTHS, N)
    assert step_matmul_shapes((3, 4, 2), 5) == [(5, 3, 4), (5, 4, 2), (3, 5, 4), (4, 5, 2), (5, 2, 4)]


def test_full_memory_reads_sizes_and_measures_buffers():
    from full_memory import chapter_sizes, COMPUTATIONS, memory_of

    smoke, full = chapter_sizes("07", "smoke"), chapter_sizes("07", "full")
    assert set(smoke) == set(full) and full["ngd_width"] > smoke["ngd_width"]
    assert len(chapter_sizes("03", "full")["multiples"]) > 1  # a grid built with np in the chapter
    with pytest.raises(ValueError, match="scale"):
        chapter_sizes("07", "huge")
    row = memory_of(lambda a: (2 * a).sum(axis=1), (jax.ShapeDtypeStruct((256, 64), jnp.float32),))
    assert row["arguments"] == 256 * 64 * 4 and row["outputs"] == 256 * 4
    assert row["peak"] == row["arguments"] + row["outputs"] + row["temps"] - row["aliased"]
    # every chapter has an entry; one of them compiles at smoke sizes
    assert sorted(COMPUTATIONS) == [f"{i:02d}" for i in range(1, 10)]
    (name, fn, args, x64), *_ = COMPUTATIONS["07"](smoke)
    assert memory_of(fn, args, x64)["peak"] > 0 and str(smoke["ngd_width"]) in name


def test_gpu_full_runs_fastest_first_within_the_budget(tmp_path):
    from gpu_full import fastest_first, load_estimates, pinned_jax_version, run_all, summary_table

    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned_jax_version())
    assert set(load_estimates()) == {f"{i:02d}" for i in range(1, 10)}  # the committed ci times
    (tmp_path / "01.json").write_text('{"wall_time_s": 9.0}')
    (tmp_path / "02.json").write_text('{"wall_time_s": 3.0}')
    assert load_estimates(tmp_path) == {"01": 9.0, "02": 3.0}
    assert fastest_first(["01", "03", "02"], {"01": 9.0, "02": 3.0}) == ["02", "01", "03"]

    now = [0.0]
    def fake_run(ch, timeout_s, seconds):  # a chapter that takes seconds[ch], cut at its timeout
        took = min(seconds[ch], timeout_s)
        now[0] += took
        return dict(chapter=ch, status="ok" if took < timeout_s else "timeout", wall_s=took, timeout_s=timeout_s)

    records = run_all(["a", "b", "c", "d"], budget_s=100, per_chapter_s=50, min_start_s=20, run=fake_run,
                      clock=lambda: now[0], seconds=dict(a=30, b=60, c=5, d=5))
    # b is cut at the per-chapter limit; c starts with exactly min_start_s left; d would have 15 s < 20 s
    assert [(r["chapter"], r["status"]) for r in records] == [("a", "ok"), ("b", "timeout"), ("c", "ok"),
                                                              ("d", "skipped")]
    assert [r.get("timeout_s") for r in records[:3]] == [50, 50, 20] and now[0] == 85
    env = dict(device="cpu", backend="cpu", jax="0", gpu=False)
    table = summary_table(env, records)
    assert "NO GPU" in table and table.count("\n| ") == 1 + len(records)
