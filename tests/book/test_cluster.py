"""The sweep's Ray engine: atomic unpacking of shipped runs, and a local Ray instance matching the local engine."""

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest

from overparam.book import cluster
from overparam.book import sweep as sw
from overparam.book.runner import cached_run, run_dir

from _support import make_root

# A claim computed by JAX from the seed: a mix-up of seeds or a nondeterministic engine would show.
DRAWS = ('import jax\n'
         'claims.claim("draw", "a normal draw from the seed", float(jax.random.normal(jax.random.key(seed))), '
         'interval=(-10, 10))')


def _archive(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


RUN_FILES = {"notebooks/01_alpha.ipynb": "{}", "results/01.json": "{}", "status/01.json": "{}",
             "figures/01/fig.png": "png", "keys/01.key": "abc"}


def test_unpack_moves_the_key_last_and_an_interrupted_unpack_is_unfinished(tmp_path, monkeypatch):
    out = tmp_path / "run"
    (out / "keys").mkdir(parents=True)
    (out / "keys" / "01.key").write_text("old")
    (out / "notebooks").mkdir()
    (out / "notebooks" / "01_alpha.failed.ipynb").write_text("{}")
    moved, real_replace = [], os.replace

    def interrupted(src, dst):
        moved.append(Path(dst).relative_to(out).as_posix())
        if len(moved) == 3:
            raise KeyboardInterrupt("the driver was stopped")
        real_replace(src, dst)

    monkeypatch.setattr(cluster.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cluster.unpack_run(_archive(RUN_FILES), out, "01", "01_alpha")
    assert not (out / "keys" / "01.key").exists(), "an interrupted unpack must not leave a key (it would look finished)"
    assert not list(out.glob(".incoming-*")), "the staging folder is removed"

    monkeypatch.setattr(cluster.os, "replace", real_replace)
    assert cluster.unpack_run(_archive(RUN_FILES), out, "01", "01_alpha") is True
    assert (out / "keys" / "01.key").read_text() == "abc" and (out / "figures" / "01" / "fig.png").exists()
    assert not (out / "notebooks" / "01_alpha.failed.ipynb").exists(), "a finished run replaces the failed attempt"
    moved.clear()
    monkeypatch.setattr(cluster.os, "replace", lambda s, d: (moved.append(Path(d).name), real_replace(s, d)))
    cluster.unpack_run(_archive(RUN_FILES), out, "01", "01_alpha")
    assert moved[-1] == "01.key" and len(moved) == len(RUN_FILES)


def test_unpack_rejects_entries_outside_the_run_folder(tmp_path):
    out = tmp_path / "run"
    for name in ("../escape.txt", "lib/overparam/stats.py", "/etc/passwd"):
        with pytest.raises(ValueError, match="unexpected entry"):
            cluster.unpack_run(_archive({name: "x"}), out, "01", "01_alpha")
    assert sorted(p.name for p in out.iterdir()) == [] and not (tmp_path / "escape.txt").exists()


def _claims(folder: Path, cid: str) -> list[dict]:
    return json.loads((folder / "results" / f"{cid}.json").read_text())["claims"]


@pytest.mark.slow
def test_ray_engine_on_a_local_instance_matches_the_local_engine(tmp_path, monkeypatch):
    if os.environ.get("CI"):
        import ray  # noqa: F401  (CI installs the cluster extra: a missing Ray fails here)
    ray = pytest.importorskip("ray", reason="Ray is not installed (make install-cluster)")
    # one node on the loopback interface only (Ray's single-machine mode), no usage reports
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv(cluster.CODE_DIR_ENV, str(tmp_path / "code"))  # where workers unpack the shipped code
    import ray._private.ray_constants as rc
    monkeypatch.setattr(rc, "ENABLE_RAY_CLUSTER", False)

    local_root = make_root(tmp_path / "local", {"01_alpha": DRAWS, "02_beta": DRAWS})
    ray_root = tmp_path / "ray" / "book"
    shutil.copytree(local_root, ray_root)
    local = sw.sweep("smoke", "0,1", root=local_root, log=lambda *a, **k: None)
    assert [r.run.status for r in local] == ["ok"] * 4

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 ** 2)
    try:
        assert [n["NodeManagerAddress"] for n in ray.nodes()] == ["127.0.0.1"]
        remote = sw.sweep("smoke", "0,1", root=ray_root, engine="ray", log=lambda *a, **k: None)
        assert [(r.task.cid, r.task.seed, r.run.status) for r in remote] == \
            [("01", 0, "ok"), ("02", 0, "ok"), ("01", 1, "ok"), ("02", 1, "ok")]
        again = sw.sweep("smoke", "0,1", root=ray_root, engine="ray", log=lambda *a, **k: None)
        assert [r.run.status for r in again] == ["cached"] * 4, "finished runs are not submitted again"
    finally:
        ray.shutdown()

    for seed, sub in ((0, ""), (1, "replicas/seed-1")):
        a, b = run_dir("smoke", local_root) / sub, run_dir("smoke", ray_root) / sub
        for cid, stem in (("01", "01_alpha"), ("02", "02_beta")):
            assert _claims(b, cid) == _claims(a, cid), f"chapter {cid} seed {seed}: Ray and local results differ"
            assert (b / "keys" / f"{cid}.key").read_text() == (a / "keys" / f"{cid}.key").read_text()
            assert (b / "notebooks" / f"{stem}.ipynb").exists()
            status = json.loads((b / "status" / f"{cid}.json").read_text())
            assert status["status"] == "ok" and status["notebook"] == str(b / "notebooks" / f"{stem}.ipynb")
            ctx = json.loads((b / "results" / f"{cid}.json").read_text())["run_context"]
            assert ctx["engine"] == "ray" and ctx["ray_job_id"] and ctx["ray_node_id"] and ctx["host"]
            assert cached_run(stem, "smoke", {"seed": seed}, root=ray_root, out=b) is not None
    assert len(list((tmp_path / "code").iterdir())) == 1, "the code is unpacked once per node"
    draws = {seed: _claims(run_dir("smoke", local_root) / sub, "01")[0]["measured"]
             for seed, sub in ((0, ""), (1, "replicas/seed-1"))}
    assert draws[0] != draws[1], "the two seeds must give different draws"
