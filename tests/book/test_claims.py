"""Claims: evaluation against a value±tolerance or an interval, enforcement by scale, the results file."""

import json
import math

import pytest

from overparam.book.claims import FAIL, PASS, RECORDED, ClaimRecorder


def test_value_with_tolerance_and_interval():
    rec = ClaimRecorder("99", scale="ci", seed=0)
    assert rec.claim("a", "slope", -0.48, predicted=-0.5, tolerance=0.05).status == PASS
    assert rec.claim("b", "slope", -0.30, predicted=-0.5, tolerance=0.05).status == FAIL
    assert rec.claim("c", "positive", 1e-3, interval=(0, None)).status == PASS
    assert rec.claim("d", "below one", 1.5, interval=(None, 1.0)).status == FAIL
    assert [c.id for c in rec.failures()] == ["b", "d"]


def test_non_finite_measurement_fails_with_a_note():
    rec = ClaimRecorder("99", scale="full", seed=0)
    c = rec.claim("nan", "diverged run", math.nan, interval=(0, 1))
    assert c.status == FAIL and "not finite" in c.note


def test_below_holds_from_is_recorded_not_enforced():
    rec = ClaimRecorder("99", scale="smoke", seed=0)
    c = rec.claim("a", "slope", 3.0, predicted=-0.5, tolerance=0.1)
    assert c.status == RECORDED and c.within is False and "not enforced" in c.note
    assert rec.claim("b", "slope", 3.0, predicted=3.0, tolerance=0.1, holds_from="smoke").status == PASS


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "either predicted"),
    (dict(predicted=1.0, interval=(0, 1)), "either predicted"),
    (dict(predicted=1.0), "needs a tolerance"),
    (dict(predicted=1.0, tolerance=-1), "needs a tolerance"),
    (dict(interval=(2, 1)), "exceeds upper end"),
    (dict(interval=(0, 1), holds_from="huge"), "not a known scale"),
])
def test_bad_claims_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ClaimRecorder("99", scale="ci", seed=0).claim("x", "s", 0.5, **kwargs)


def test_duplicate_ids_and_non_numbers_rejected():
    rec = ClaimRecorder("99", scale="ci", seed=0)
    rec.claim("x", "s", 0.5, interval=(0, 1))
    with pytest.raises(ValueError, match="used twice"):
        rec.claim("x", "s", 0.5, interval=(0, 1))
    with pytest.raises(ValueError, match="measured must be a number"):
        rec.claim("y", "s", "big", interval=(0, 1))


def test_results_file_has_claims_and_provenance(tmp_path):
    rec = ClaimRecorder("07", scale="ci", seed=[0, 1], parameters={"n": 3})
    rec.claim("a", "slope", -0.5, predicted=-0.5, tolerance=0.1)
    path = rec.save(tmp_path)
    data = json.loads(path.read_text())
    assert path.name == "07.json"
    assert data["chapter"] == "07" and data["scale"] == "ci" and data["seed"] == [0, 1]
    assert data["claims"][0]["status"] == PASS and data["parameters"] == {"n": 3}
    for key in ("versions", "device", "git_commit", "wall_time_s", "finished_at"):
        assert key in data
    assert data["versions"]["jax"] and data["device"]["backend"] == "cpu"
    assert "| `a` | slope |" in rec.table_markdown()


def test_known_failure_stays_failed_but_does_not_block():
    rec = ClaimRecorder("99", scale="ci", seed=0)
    c = rec.claim("k", "slope", -0.8, predicted=-0.5, tolerance=0.15, known_failure="the bound is not tight")
    assert c.status == FAIL and not c.blocking and rec.failures() == []
    assert "known, explained" in rec.table_markdown()
    ok = rec.claim("k2", "slope", -0.5, predicted=-0.5, tolerance=0.15, known_failure="stale marker")
    assert ok.status == PASS and "remove the marker" in ok.note


# ---------------------------------------------------------------- controls, margins, power, replication
from overparam.book.claims import (CANNOT_DISCRIMINATE, FRAGILE, MISSING_CONTROL, UNDERPOWERED, assess,  # noqa: E402
                                   quality_flags)


def test_per_seed_values_give_mean_and_standard_error():
    rec = ClaimRecorder("99", scale="ci", seed=0)
    c = rec.claim("m", "mean over seeds", [1.0, 2.0, 3.0], predicted=2.0, tolerance=5.0)
    assert c.measured == 2.0 and c.per_seed == (1.0, 2.0, 3.0) and c.se == pytest.approx(1 / math.sqrt(3))
    same = rec.claim("m2", "mean over seeds", per_seed=[1.0, 2.0, 3.0], predicted=2.0, tolerance=5.0)
    assert (same.measured, same.per_seed, same.se) == (c.measured, c.per_seed, c.se)
    also = rec.claim("m3", "mean given too", 2.0, per_seed=[1.0, 2.0, 3.0], predicted=2.0, tolerance=5.0)
    assert also.se == c.se
    one = rec.claim("m4", "one seed", [0.5], interval=(0, 1))
    assert one.se is None and UNDERPOWERED not in one.flags
    with pytest.raises(ValueError, match=r"measured=1.0 is not the mean 2.0 of per_seed"):
        rec.claim("bad", "s", 1.0, per_seed=[1.0, 2.0, 3.0], interval=(0, 5))
    with pytest.raises(ValueError, match="given twice"):
        rec.claim("bad", "s", [1.0, 2.0], per_seed=[1.0, 2.0], interval=(0, 5))
    with pytest.raises(ValueError, match="non-empty 1-d"):
        rec.claim("bad", "s", [], interval=(0, 5))
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        rec.claim("bad", "s", [[1.0, 2.0], [3.0, 4.0]], interval=(0, 5))
    with pytest.raises(ValueError, match="give the measured value"):
        rec.claim("bad", "s", interval=(0, 5))


def test_underpowered_reached_by_tolerance_and_by_boundary_and_not_otherwise():
    rec = ClaimRecorder("99", scale="ci", seed=0)
    # values 1 ± 0.1: sample sd 0.1155, SE 0.0577, so the tolerance 0.1 is below 2 SE = 0.115
    tight = rec.claim("tight", "s", per_seed=[0.9, 1.1, 0.9, 1.1], predicted=1.0, tolerance=0.1)
    assert tight.status == "pass" and UNDERPOWERED in tight.flags and "below 2 SE" in tight.power_note
    # wide tolerance, but the mean sits 0.03 inside a boundary with SE 0.058: the verdict flips within 1 SE
    edge = rec.claim("edge", "s", per_seed=[0.93, 1.13, 0.93, 1.13], interval=(1.0, None),
                     margin_note="zero effect is 0; 1 is the smallest effect the theory allows")
    assert edge.status == "pass" and UNDERPOWERED in edge.flags and "flips within 1 SE" in edge.power_note
    # the same spread far from every boundary is adequately powered
    fine = rec.claim("fine", "s", per_seed=[0.9, 1.1, 0.9, 1.1], predicted=1.0, tolerance=0.5)
    assert fine.flags == () and fine.power_note == ""
    # a failure within 1 SE of its boundary is underpowered too: it could be noise
    near_fail = rec.claim("near-fail", "s", per_seed=[0.87, 1.07, 0.87, 1.07], interval=(1.0, 2.0))
    assert near_fail.status == "fail" and UNDERPOWERED in near_fail.flags


def test_control_that_also_passes_cannot_discriminate():
    rec = ClaimRecorder("99", scale="ci", seed=0)
    good = rec.claim("gain", "median alignment gain > 0", 0.06, interval=(0, None),
                     control=-0.01, control_note="spike-free windows")
    assert good.control_within is False and good.flags == ()
    bad = rec.claim("gain2", "median alignment gain > 0", 0.06, interval=(0, None),
                    control=0.05, control_note="spike-free windows")
    assert bad.status == "pass" and bad.control_within is True and CANNOT_DISCRIMINATE in bad.flags
    assert "cannot discriminate" in repr(bad)
    per_seed = rec.claim("gain3", "s", 0.06, interval=(0, None), control=[-0.02, 0.0, -0.01], control_note="shuffled")
    assert per_seed.control == pytest.approx(-0.01) and per_seed.control_per_seed == (-0.02, 0.0, -0.01)
    diverged = rec.claim("gain4", "s", 0.06, interval=(0, None), control=math.nan, control_note="lazy regime")
    assert CANNOT_DISCRIMINATE in diverged.flags, "a control that is not finite shows nothing"
    assert not bad.blocking and rec.failures() == [], "cannot discriminate is reported, not blocking"
    with pytest.raises(ValueError, match="needs control_note"):
        rec.claim("x", "s", 0.06, interval=(0, None), control=0.0)
    with pytest.raises(ValueError, match="without a control value"):
        rec.claim("x", "s", 0.06, interval=(0, None), control_note="shuffled labels")


def test_one_sided_and_comparative_claims_need_a_control_or_a_margin():
    rec = ClaimRecorder("99", scale="ci", seed=0)
    bare = rec.claim("bare", "gain > 0", 0.06, interval=(0, None))
    assert bare.one_sided and MISSING_CONTROL in bare.flags
    margin = rec.claim("margin", "gain > 0.05", 0.06, interval=(0.05, None),
                       margin_note="0.05: twice the seed-to-seed sd of the gain")
    assert MISSING_CONTROL not in margin.flags
    two_sided = rec.claim("two", "slope", -0.5, predicted=-0.5, tolerance=0.1)
    assert not two_sided.one_sided and two_sided.flags == ()
    comp = rec.claim("comp", "catapult range generalizes better (loss ratio)", 0.7, interval=(0, 1), comparative=True)
    assert not comp.one_sided and MISSING_CONTROL in comp.flags
    comp_ok = rec.claim("comp2", "same with a control", 0.7, interval=(0, 1), comparative=True,
                        control=1.02, control_note="two runs in the same (sub-catapult) range")
    assert comp_ok.flags == ()


def test_flags_rederived_from_the_saved_record(tmp_path):
    rec = ClaimRecorder("98", scale="ci", seed=0)
    rec.claim("a", "s", per_seed=[0.9, 1.1, 0.9, 1.1], predicted=1.0, tolerance=0.1)
    rec.claim("b", "s", 0.06, interval=(0, None), control=0.05, control_note="spike-free windows")
    rec.claim("c", "s", 0.06, interval=(0, None))
    data = json.loads(rec.save(tmp_path).read_text())
    for saved, claim in zip(data["claims"], rec.claims):
        assert quality_flags(saved) == (claim.flags, claim.power_note)
    assert data["run_context"]["host"] and data["run_context"]["engine"] == "local"
    # a record written before these fields existed has no flags but the one-sided one
    old = {k: v for k, v in data["claims"][2].items() if k in ("measured", "predicted", "tolerance", "interval")}
    assert quality_flags(old) == ((MISSING_CONTROL,), "")


def _saved(measured, **kw):
    """A claim as a results file holds it."""
    rec = ClaimRecorder("97", scale="ci", seed=0)
    rec.claim("x", "s", measured, **kw)
    return json.loads(json.dumps(rec.results(), default=str))["claims"][0]


def test_fragile_pass_everywhere_and_underpowered_across_seeds():
    kw = dict(interval=(-0.6, -0.4))
    registered = _saved(-0.406, **kw)
    fragile = assess(registered, 0, {1: _saved(-0.39, **kw), 2: _saved(-0.45, **kw)})
    assert FRAGILE in fragile.flags and fragile.outcomes == {0: True, 1: False, 2: True} and not fragile.pass_everywhere
    assert UNDERPOWERED in fragile.flags and "across seeds" in fragile.power_note  # -0.406 is 0.006 from -0.4
    solid = assess(_saved(-0.5, **kw), 0, {1: _saved(-0.49, **kw), 2: _saved(-0.51, **kw)})
    assert solid.flags == () and solid.pass_everywhere and solid.spread == pytest.approx(0.01)
    missing = assess(_saved(-0.5, **kw), 0, {1: None})
    assert missing.absent == (1,) and missing.pass_everywhere and missing.spread is None
    failing = assess(_saved(-0.3, **kw), 0, {1: _saved(-0.5, **kw)})
    assert FRAGILE not in failing.flags and not failing.pass_everywhere, "fragile needs a pass at the registered seed"
    below = assess(_saved(-0.5, holds_from="full", **kw), 0, {1: _saved(-0.3, **kw)})
    assert not below.enforced and not below.pass_everywhere
    nodisc = _saved(-0.5, control=-0.45, control_note="smooth activation", **kw)
    assert not assess(nodisc, 0, {1: _saved(-0.5, **kw)}).pass_everywhere
