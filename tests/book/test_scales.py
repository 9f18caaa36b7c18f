"""Scales: one parameter, every size; unknown scales and inconsistent declarations rejected."""

import pytest

from overparam.book.scales import SCALES, check_scale, scale_rank, select_scale


def test_select_returns_the_requested_sizes():
    cfg = select_scale("ci", smoke=dict(n=1, w=[2]), ci=dict(n=10, w=[2, 4]), full=dict(n=100, w=[8]))
    assert cfg.n == 10 and cfg["w"] == [2, 4] and cfg.scale == "ci" and dict(cfg) == {"n": 10, "w": [2, 4]}


def test_unknown_scale_lists_allowed():
    with pytest.raises(ValueError, match="scale='tiny' is not a known scale; allowed: smoke, ci, full"):
        select_scale("tiny", smoke={}, ci={}, full={})


def test_every_scale_must_be_declared_with_the_same_keys():
    with pytest.raises(ValueError, match="missing: \\['full'\\]"):
        select_scale("ci", smoke=dict(n=1), ci=dict(n=2))
    with pytest.raises(ValueError, match="every scale must declare the same sizes"):
        select_scale("ci", smoke=dict(n=1), ci=dict(n=2, m=3), full=dict(n=3))


def test_undeclared_size_names_what_is_declared():
    cfg = select_scale("smoke", smoke=dict(n=1), ci=dict(n=2), full=dict(n=3))
    with pytest.raises(AttributeError, match="size 'widths' is not declared.*declared: n"):
        cfg.widths


def test_order():
    assert [scale_rank(s) for s in SCALES] == [0, 1, 2]
    assert check_scale("full") == "full"
