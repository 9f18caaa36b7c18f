"""The sweep: grid validation before any work, replication folders, cache reuse, restart after a kill."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from overparam.book import sweep as sw
from overparam.book.cli import main as cli_main
from overparam.book.runner import run_dir

from _support import make_root

# A claim whose verdict depends on the seed (holds at seed 0 only), enforced from smoke.
SEEDY = ('claims.claim("seed-zero", "the seed is below one half", float(seed), interval=(None, 0.5), '
         'holds_from="smoke", margin_note="a test")')
# Chapter 02 hangs at seed 1 while the file named by $OVERPARAM_TEST_HANG exists.
HANGS = """import os, pathlib, time
_hang = pathlib.Path(os.environ.get("OVERPARAM_TEST_HANG", "/nonexistent"))
if seed == 1 and _hang.exists():
    (_hang.parent / "started").write_text(str(os.getpid()))
    time.sleep(300)"""


@pytest.mark.parametrize("seeds, message", [
    ("0,x", "bad entry 'x'"), ("-1", "bad entry '-1'"), ("", "bad entry ''"), ("0,0", "lists a seed twice"),
    ("1.5", "bad entry '1.5'"), ([True], "bad entry True"), ([], "seeds is empty"),
])
def test_bad_seed_lists_rejected(seeds, message):
    with pytest.raises(ValueError, match=message):
        sw.parse_seeds(seeds)


def test_seed_lists_parsed():
    assert sw.parse_seeds("0, 1,2") == (0, 1, 2) and sw.parse_seeds([3, 1]) == (3, 1)


def test_grid_is_validated_before_anything_runs(tmp_path, monkeypatch):
    root = make_root(tmp_path, {"01_alpha": "", "02_beta": ""})
    no_seed = root / "chapters" / "03_gamma.md"
    no_seed.write_text((root / "chapters" / "02_beta.md").read_text().replace("seed = 0\n", "")
                       .replace("seed=seed", "seed=None"))
    bad = [
        (dict(scales="huge", seeds="0,1", chapters="01"), "scale='huge' is not a known scale"),
        (dict(scales="ci", seeds="0,1", chapters="01,07"), "unknown chapter '07'"),
        (dict(scales="ci", seeds="0,one", chapters="01"), "bad entry 'one'"),
        (dict(scales="ci", seeds="0", chapters="01,01"), "names a chapter twice"),
        (dict(scales="ci", seeds="0", chapters="03"), "must declare an integer `seed`"),
        (dict(scales="ci", seeds="0", chapters="01", engine="spark"), "engine='spark' is not a known engine"),
        (dict(scales="ci", seeds="0", chapters="01", jobs=0), "jobs must be a positive integer"),
        (dict(scales="ci", seeds="0", chapters="01", retries=-1), "retries must be a non-negative integer"),
        (dict(scales="ci", seeds="0", chapters="01", cpus_per_task=0), "cpus_per_task must be a positive number"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            sw.sweep(root=root, **kwargs)
    real_find_spec = sw.importlib.util.find_spec
    monkeypatch.setattr(sw.importlib.util, "find_spec", lambda name: None if name == "ray" else real_find_spec(name))
    with pytest.raises(ValueError, match=r"engine 'ray' needs Ray, which is not installed: pip install -e '.\[cluster\]'"):
        sw.sweep("ci", "0,1", "01", engine="ray", root=root)
    assert not (root / "_build").exists(), "validation must happen before any output is written"


def test_cli_sweep_bad_input_exit_code_2(tmp_path, monkeypatch, capsys):
    root = make_root(tmp_path, {"01_alpha": ""})
    monkeypatch.chdir(root)
    for argv, message in [
        (["--scale", "ci", "--seeds", "0,x"], "bad entry 'x'"),
        (["--scale", "big", "--seeds", "0"], "allowed: smoke, ci, full"),
        (["--seeds", "0", "--chapters", "09"], "unknown chapter '09'; known chapters: 01 (01_alpha)"),
        (["--seeds", "0", "--engine", "dask"], "allowed: local, ray"),
    ]:
        assert cli_main(["sweep", *argv]) == 2
        assert message in capsys.readouterr().err
    assert not (root / "_build").exists()


@pytest.mark.slow
def test_replicas_beside_the_main_run_cached_and_fragile(tmp_path):
    root = make_root(tmp_path, {"01_alpha": SEEDY, "02_beta": ""})
    lines = []
    first = sw.sweep("smoke", "0,1", root=root, log=lambda *a, **k: lines.append(a[0]))
    assert [(r.task.cid, r.task.seed, r.run.status) for r in first] == \
        [("01", 0, "ok"), ("02", 0, "ok"), ("01", 1, "ok"), ("02", 1, "ok")]
    assert "[4/4] 02_beta (smoke, seed 1) ok" in lines[-1]
    main, replica = run_dir("smoke", root), run_dir("smoke", root) / "replicas" / "seed-1"
    assert json.loads((main / "results" / "01.json").read_text())["seed"] == 0
    assert json.loads((replica / "results" / "01.json").read_text())["seed"] == 1
    assert (replica / "notebooks" / "01_alpha.ipynb").exists() and (replica / "keys" / "01.key").exists()
    assert (main / "keys" / "01.key").read_text() != (replica / "keys" / "01.key").read_text(), "seed is in the key"

    # finished runs are served from the cache; a new seed runs in the process pool
    again = sw.sweep("smoke", "0,1,2", root=root, jobs=2, log=lambda *a, **k: None)
    assert [r.run.status for r in again] == ["cached"] * 4 + ["ok", "ok"]

    reps = sw.replication("smoke", root=root)
    assert reps["01"].seeds == [0, 1, 2] and reps["01"].problems == {}
    (claim, a), = [(c, a) for c, a in reps["01"].assessments() if c["id"] == "seed-zero"]
    assert a.outcomes == {0: True, 1: False, 2: False} and a.fragile and not a.pass_everywhere
    per, total = sw.counts(reps)
    assert (per["01"].enforced, per["01"].fragile, per["01"].pass_everywhere) == (1, 1, 0)
    report = sw.replication_report(reps)
    assert "01 seed-zero: seed 0: 0, seed 1: 1*, seed 2: 2*" in report
    assert "0 of 1 enforced claims pass at every seed; 1 fragile" in report

    # replicas computed by other code are not used, and say so
    with open(root / "lib" / "overparam" / "stats.py", "a") as fh:
        fh.write("\n# touched\n")
    stale = sw.replication("smoke", root=root)["01"]
    assert stale.replicas == {} and "from other code" in stale.problems[1]


@pytest.mark.slow
def test_killed_sweep_restarted_redoes_only_unfinished_runs(tmp_path):
    root = make_root(tmp_path, {"01_alpha": "", "02_beta": HANGS})
    hang = tmp_path / "hang"
    hang.write_text("")
    env = {**os.environ, "OVERPARAM_TEST_HANG": str(hang)}
    proc = subprocess.Popen([sys.executable, "-m", "overparam", "sweep", "--scale", "smoke", "--seeds", "0,1"],
                            cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = tmp_path / "started"
    try:
        deadline = time.monotonic() + 240
        while not started.exists():
            assert proc.poll() is None, "the sweep ended before reaching the hanging run"
            assert time.monotonic() < deadline, "the hanging run never started"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if started.exists():  # the chapter's kernel runs in a session of its own
            try:
                os.kill(int(started.read_text()), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    main, replica = run_dir("smoke", root), run_dir("smoke", root) / "replicas" / "seed-1"
    assert (main / "keys" / "01.key").exists() and (main / "keys" / "02.key").exists()
    assert (replica / "keys" / "01.key").exists() and not (replica / "keys" / "02.key").exists()

    hang.unlink()
    restarted = sw.sweep("smoke", "0,1", root=root, log=lambda *a, **k: None)
    assert [(r.task.cid, r.task.seed, r.run.status) for r in restarted] == \
        [("01", 0, "cached"), ("02", 0, "cached"), ("01", 1, "cached"), ("02", 1, "ok")]
    assert (replica / "keys" / "02.key").exists()
