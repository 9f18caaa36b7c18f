"""Claims: a chapter's central results as checkable statements.

A claim is a measured number next to what theory predicts (a value with an
absolute tolerance, or an interval) and the smallest scale at which the
prediction is expected to hold. Below that scale (e.g. at ``smoke``) the claim
is recorded but not enforced. Tolerances are fixed in the chapter source before
the experiment runs; a failing claim is reported, never loosened.

Each executed chapter writes one JSON file: its claims plus provenance
(versions, device, seed, scale, wall time, git commit, host and job). The book build
collects these files into the scorecard and provenance pages.

Claims that can fail
--------------------
A check that would also pass if the theory were false is a defect. The recorder and the
scorecard expose such checks with the terms below; every one is computed from the fields a
claim saves, by the function named, so the scorecard re-derives them from the results files.

accepted region (:func:`accepted_region`)
    The values the prediction allows: ``[lo, hi]`` for ``interval=(lo, hi)`` (an open end,
    ``None``, is -inf or +inf), ``[predicted - tolerance, predicted + tolerance]`` otherwise.
    Its *half-width* ``(hi - lo) / 2`` is the claim's tolerance (infinite when an end is open).
    A value *holds* when it is finite and inside the region (ends included).
one-sided (:func:`is_one_sided`)
    A claim given as an interval with exactly one open end, e.g. ``interval=(0, None)`` for
    "the gain is positive".
comparative
    A claim the chapter declares with ``comparative=True``: its statistic compares A with B
    (a difference, a ratio, a rank correlation between a setting and an outcome) and the
    claim is that A beats B, e.g. "the catapult range generalizes better".
control
    ``control=`` is the same statistic measured where theory predicts the effect is absent
    (spike-free windows, a frozen activation pattern, shuffled labels, a lazy-regime or
    smooth-activation run, the point estimate instead of the posterior); ``control_note=``
    says which, and is required with it. A number, or a sequence of per-seed values (their
    mean is the control). The control *discriminates* when it does not hold, i.e. when it is
    finite and falls outside the accepted region.
cannot discriminate (:data:`CANNOT_DISCRIMINATE`)
    A claim with a control that does not discriminate: the check would pass without the
    effect. It counts as failing on the scorecard (reported, not blocking the build).
margin
    ``margin_note=`` gives the reasoning for where the closed end of a one-sided or
    comparative claim sits relative to the no-effect value (e.g. "ratio <= 0.9, not 1:
    two seed-to-seed standard deviations of the ratio below 1").
missing control (:data:`MISSING_CONTROL`)
    A one-sided or comparative claim with neither a control nor a margin note.
per-seed values, mean and SE (:func:`mean_and_se`)
    ``per_seed=[x_1, ..., x_n]``, or the measured value itself given as a sequence: the
    measured value is their mean, ``SE = s / sqrt(n)`` with ``s`` the sample standard
    deviation (ddof 1); no SE for n = 1. Non-finite values make the mean non-finite (the
    claim then fails).
underpowered (:data:`UNDERPOWERED`, :func:`power_problem`)
    Given a point ``x`` and its standard error ``SE`` (n >= 2): the half-width of the accepted
    region is below ``2 SE``, or the verdict at ``x - SE`` or at ``x + SE`` differs from the
    verdict at ``x`` (the boundary lies within 1 SE). The recorder applies it with the mean of
    the per-seed values; the scorecard applies it also to replicated claims, with the
    registered run's value as ``x`` and, as ``SE``, the sample standard deviation of the
    measured value across all seeds run (registered and replication seeds, n >= 2): one
    run's value varies by that much from seed to seed.
registered seed, replication seeds
    The registered run is the one the book shows (``_build/runs/<scale>/``, the chapter's
    declared ``seed``); ``python -m overparam sweep`` reruns chapters at other seeds into
    ``_build/runs/<scale>/replicas/seed-<k>/``. A claim's *outcome* at a seed is whether its
    measured value holds there.
fragile (:data:`FRAGILE`, :func:`assess`)
    A claim that passes at the registered seed (status ``pass``) and does not hold at one or
    more replication seeds that recorded it.
pass everywhere (:func:`assess`)
    An enforced claim that holds at the registered seed and at every replication seed that
    recorded it, and is not "cannot discriminate".

Fragile, underpowered, cannot discriminate and missing control are reported on the
scorecard and in the build summary; they do not fail the build (``Claim.blocking`` is about
the measured verdict only). The summary counts them over enforced claims, and they overlap:
one claim can be fragile and underpowered.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

from overparam.book.provenance import (device_description, git_commit, now_iso, package_versions, repo_root,
                                       run_context)
from overparam.book.scales import check_scale, scale_rank

RESULTS_DIR_ENV = "OVERPARAM_RESULTS_DIR"
PASS, FAIL, RECORDED = "pass", "fail", "recorded"
# How a status reads in the Markdown tables (a chapter's report and the scorecard).
STATUS_MARK = {PASS: "✅ pass", FAIL: "❌ **FAIL**", RECORDED: "○ recorded"}
# Quality flags (defined in the module docstring): reported on the scorecard, never blocking.
CANNOT_DISCRIMINATE, UNDERPOWERED, MISSING_CONTROL, FRAGILE = (
    "cannot discriminate", "underpowered", "missing control", "fragile")


@dataclass(frozen=True)
class Claim:
    """One checked statement. ``status`` is pass/fail, or ``recorded`` below ``holds_from``.

    ``per_seed``: the per-seed values whose mean is ``measured`` (None when the chapter gave one
    number), ``se`` their standard error (None for fewer than two). ``control``: the control's
    value (the mean of ``control_per_seed`` when given per seed), ``control_within`` whether it
    holds (None without a control). ``flags``: which of cannot discriminate / underpowered /
    missing control apply, ``power_note`` why it is underpowered. Terms: module docstring.
    """

    id: str
    statement: str
    measured: float
    predicted: float | None
    tolerance: float | None
    interval: tuple[float | None, float | None] | None
    holds_from: str
    scale: str
    status: str
    within: bool
    note: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    known_failure: str = ""
    per_seed: tuple[float, ...] | None = None
    se: float | None = None
    control: float | None = None
    control_per_seed: tuple[float, ...] | None = None
    control_note: str = ""
    control_within: bool | None = None
    margin_note: str = ""
    comparative: bool = False
    one_sided: bool = False
    flags: tuple[str, ...] = ()
    power_note: str = ""

    def __repr__(self) -> str:
        """One line, as a notebook shows the claim a cell ends with."""
        verdict = {PASS: "pass", FAIL: "FAIL", RECORDED: "recorded"}[self.status]
        if self.status == RECORDED:
            verdict += f" (within; enforced from {self.holds_from})" if self.within else \
                f" (outside; enforced from {self.holds_from})"
        if self.known_failure and not self.within:
            verdict += " (known failure, explained in the text)"
        if self.flags:
            verdict += f" [{', '.join(self.flags)}]"
        return f"claim {self.id}: measured {self.measured:.4g}, predicted {self.prediction_text} -> {verdict}"

    @property
    def blocking(self) -> bool:
        """A failure that nobody has investigated and explained: it fails the book build."""
        return self.status == FAIL and not self.known_failure

    @property
    def prediction_text(self) -> str:
        return prediction_text(self.predicted, self.tolerance, self.interval)


def prediction_text(predicted: float | None, tolerance: float | None, interval) -> str:
    """'[lo, hi]' for an interval (open ends as ∓∞), else 'predicted ± tolerance'."""
    if interval is not None:
        lo, hi = interval
        lo_s = "−∞" if lo is None else f"{lo:.4g}"
        hi_s = "+∞" if hi is None else f"{hi:.4g}"
        return f"[{lo_s}, {hi_s}]"
    return f"{predicted:.4g} ± {tolerance:.3g}"


def _as_float(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number (a scalar array is fine), got {value!r}") from None


def _as_values(name: str, value: Any) -> tuple[float, ...] | float:
    """A number (float) or a non-empty 1-d sequence of numbers (tuple of floats); ValueError otherwise."""
    import numpy as np

    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number or a sequence of per-seed numbers, got {value!r}") from None
    if arr.ndim == 0:
        return float(arr)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a number or a non-empty 1-d sequence of per-seed numbers, "
                         f"got an array of shape {arr.shape}")
    return tuple(float(v) for v in arr)


# ---------------------------------------------------------------- what a claim can and cannot show
def accepted_region(predicted: float | None, tolerance: float | None, interval) -> tuple[float, float]:
    """``(lo, hi)`` of the values the prediction allows; open interval ends are -inf/+inf."""
    if interval is not None:
        lo, hi = interval
        return (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))
    return float(predicted) - float(tolerance), float(predicted) + float(tolerance)


def holds(value: float, region: tuple[float, float]) -> bool:
    """Whether ``value`` is finite and inside ``region`` (ends included)."""
    return math.isfinite(value) and region[0] <= value <= region[1]


def evaluate(measured: float, predicted: float | None, tolerance: float | None, interval) -> tuple[bool, str]:
    """Whether ``measured`` agrees with the prediction, and a note when it cannot."""
    if not math.isfinite(measured):
        return False, "measurement is not finite (diverged or undefined)"
    return holds(measured, accepted_region(predicted, tolerance, interval)), ""


def is_one_sided(interval) -> bool:
    """An interval with exactly one open end (``None``)."""
    return interval is not None and (interval[0] is None) != (interval[1] is None)


def mean_and_se(values) -> tuple[float, float | None]:
    """Mean of per-seed ``values`` and its standard error ``s / sqrt(n)`` (sample sd, ddof 1; None for n < 2)."""
    values = [float(v) for v in values]
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2 or not math.isfinite(mean):
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1) / n)


def spread(values) -> float | None:
    """Sample standard deviation (ddof 1) of ``values``, over the finite ones; None for fewer than two."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return None
    _, se = mean_and_se(finite)
    return se * math.sqrt(len(finite))


def power_problem(point: float, se: float | None, region: tuple[float, float]) -> str:
    """Why a value ``point`` with standard error ``se`` is underpowered against ``region``; '' when it is not.

    Underpowered: the half-width of ``region`` is below ``2 se``, or the verdict at ``point - se`` or
    ``point + se`` differs from the verdict at ``point``. Nothing to say without a finite ``se``.
    """
    if se is None or not math.isfinite(se) or not math.isfinite(point):
        return ""
    half = (region[1] - region[0]) / 2
    if half < 2 * se:
        return f"tolerance {half:.3g} is below 2 SE = {2 * se:.3g}"
    verdict = holds(point, region)
    if holds(point - se, region) != verdict or holds(point + se, region) != verdict:
        return f"the verdict flips within 1 SE ({se:.3g}) of the boundary"
    return ""


def needs_control(record: Mapping[str, Any]) -> bool:
    """One-sided or comparative: such a claim must carry a control or a margin note."""
    return is_one_sided(record.get("interval")) or bool(record.get("comparative"))


def quality_flags(record: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """The flags (cannot discriminate, underpowered, missing control) of one claim, and its power note.

    ``record`` is a claim as saved in a results file (``asdict(Claim)``); fields that older files
    lack count as absent. Underpowered here is the per-seed test (the scorecard adds replication).
    """
    region = accepted_region(record["predicted"], record["tolerance"], record.get("interval"))
    flags = []
    control = record.get("control")
    if control is not None and (holds(control, region) or not math.isfinite(control)):
        flags.append(CANNOT_DISCRIMINATE)
    note = power_problem(record["measured"], record.get("se"), region)
    if note:
        flags.append(UNDERPOWERED)
    if needs_control(record) and control is None and not record.get("margin_note"):
        flags.append(MISSING_CONTROL)
    return tuple(flags), note


@dataclass(frozen=True)
class Assessment:
    """A claim of the registered run judged together with its replication seeds (module docstring).

    ``outcomes``: seed -> whether the measured value holds there, for every seed that recorded
    the claim (registered seed included); ``values``: seed -> measured value; ``absent``:
    replication seeds that did not record it; ``spread``: sample sd of the measured values over
    all seeds (None for fewer than two); ``flags``: quality flags incl. fragile and underpowered
    from replication; ``power_note``: the reasons it is underpowered.
    """

    enforced: bool
    outcomes: dict[int, bool]
    values: dict[int, float]
    absent: tuple[int, ...]
    spread: float | None
    flags: tuple[str, ...]
    power_note: str
    pass_everywhere: bool

    @property
    def fragile(self) -> bool:
        return FRAGILE in self.flags


def assess(registered: Mapping[str, Any], seed: int, replicas: Mapping[int, Mapping[str, Any] | None]) -> Assessment:
    """Judge ``registered`` (a saved claim of the run at ``seed``) with the same claim at other seeds.

    ``replicas``: replication seed -> that seed's saved claim of the same id, or None where the
    chapter did not run or did not record it. Outcomes everywhere use the registered claim's
    accepted region, so every seed is judged against the same, pre-registered prediction.
    """
    region = accepted_region(registered["predicted"], registered["tolerance"], registered.get("interval"))
    values = {seed: float(registered["measured"])}
    values.update({k: float(c["measured"]) for k, c in sorted(replicas.items()) if c is not None and k != seed})
    outcomes = {k: holds(v, region) for k, v in values.items()}
    absent = tuple(k for k, c in sorted(replicas.items()) if c is None and k != seed)
    flags, note = quality_flags(registered)
    flags = list(flags)
    sd = spread(values.values())
    across = power_problem(values[seed], sd, region) if len(values) > 1 else ""
    note = "; ".join(filter(None, [f"per seed: {note}" if note else "", f"across seeds: {across}" if across else ""]))
    if across and UNDERPOWERED not in flags:
        flags.append(UNDERPOWERED)
    if registered["status"] == PASS and not all(outcomes.values()):
        flags.append(FRAGILE)
    enforced = registered["status"] != RECORDED
    everywhere = enforced and all(outcomes.values()) and CANNOT_DISCRIMINATE not in flags
    return Assessment(enforced, outcomes, values, absent, sd, tuple(flags), note, everywhere)


class ClaimRecorder:
    """Collects a chapter's claims and writes them with provenance.

    ``chapter`` is the chapter id (e.g. ``"01"``), ``scale`` one of
    smoke/ci/full, ``seed`` the chapter's base seed (or list of seeds).
    Wall time counts from construction to ``save``.
    """

    def __init__(self, chapter: str, scale: str, seed: Any, parameters: dict[str, Any] | None = None):
        self.chapter = str(chapter)
        self.scale = check_scale(scale)
        self.seed = seed
        self.parameters = dict(parameters or {})
        self.claims: list[Claim] = []
        self._t0 = time.perf_counter()

    def claim(
        self,
        id: str,
        statement: str,
        measured: Any = None,
        *,
        predicted: float | None = None,
        tolerance: float | None = None,
        interval: tuple[float | None, float | None] | None = None,
        holds_from: str = "ci",
        details: dict[str, Any] | None = None,
        known_failure: str = "",
        per_seed: Any = None,
        control: Any = None,
        control_note: str = "",
        margin_note: str = "",
        comparative: bool = False,
    ) -> Claim:
        """Record a claim: give ``predicted`` and ``tolerance`` (absolute), or ``interval=(lo, hi)``.

        Either end of the interval may be ``None`` (open). ``holds_from`` is the
        smallest scale at which the prediction is expected to hold.

        ``measured`` is a number, or a sequence of per-seed values (the claim is then about their
        mean); ``per_seed=[...]`` says the same with ``measured`` omitted (or equal to their mean).
        ``control`` (a number or per-seed values) is the same statistic where theory says the effect
        is absent, described by ``control_note``; ``margin_note`` is the reasoning for the margin
        of a one-sided or comparative claim; ``comparative=True`` marks an "A beats B" claim. The
        module docstring defines what the recorder and the scorecard make of them.

        ``known_failure``: for a claim that failed, was investigated, and is explained in the
        chapter, the explanation. The claim keeps its prediction and tolerance and is still
        shown as failing on the scorecard, with this text; it no longer fails the build (like
        pytest's xfail). Never use it to hide a failure that has not been explained.
        """
        if any(c.id == id for c in self.claims):
            raise ValueError(f"claim id {id!r} is used twice in chapter {self.chapter}")
        check_scale(holds_from)
        if (interval is None) == (predicted is None):
            raise ValueError(f"claim {id!r}: give either predicted (with tolerance) or interval, not both or neither")
        if interval is not None:
            if len(interval) != 2:
                raise ValueError(f"claim {id!r}: interval must be (lo, hi), got {interval!r}")
            lo, hi = (None if v is None else _as_float("interval end", v) for v in interval)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"claim {id!r}: interval lower end {lo} exceeds upper end {hi}")
            interval = (lo, hi)
        else:
            predicted = _as_float("predicted", predicted)
            if tolerance is None or _as_float("tolerance", tolerance) < 0:
                raise ValueError(f"claim {id!r}: a predicted value needs a tolerance >= 0, got {tolerance!r}")
            tolerance = float(tolerance)
        value, seeds, se = self._measurement(id, measured, per_seed)
        control, control_seeds = self._control(id, control, control_note)
        if not isinstance(margin_note, str) or not isinstance(comparative, bool):
            raise ValueError(f"claim {id!r}: margin_note must be a string and comparative a bool, "
                             f"got {margin_note!r} and {comparative!r}")
        within, note = evaluate(value, predicted, tolerance, interval)
        enforced = scale_rank(self.scale) >= scale_rank(holds_from)
        status = (PASS if within else FAIL) if enforced else RECORDED
        if not enforced:
            note = (note + "; " if note else "") + f"not enforced below scale {holds_from!r}"
        if known_failure and within:
            note = (note + "; " if note else "") + "marked as a known failure but it holds now: remove the marker"
        region = accepted_region(predicted, tolerance, interval)
        fields = dict(per_seed=seeds, se=se, control=control, control_per_seed=control_seeds,
                      control_note=control_note, control_within=None if control is None else holds(control, region),
                      margin_note=margin_note, comparative=comparative, one_sided=is_one_sided(interval))
        flags, power_note = quality_flags(dict(fields, measured=value, predicted=predicted, tolerance=tolerance,
                                               interval=interval))
        c = Claim(id, statement, value, predicted, tolerance, interval, holds_from, self.scale, status, within, note,
                  dict(details or {}), str(known_failure), **fields, flags=flags, power_note=power_note)
        self.claims.append(c)
        return c

    @staticmethod
    def _measurement(id: str, measured: Any, per_seed: Any) -> tuple[float, tuple[float, ...] | None, float | None]:
        """(value, per-seed values or None, SE or None) from ``measured`` and/or ``per_seed``."""
        if measured is None and per_seed is None:
            raise ValueError(f"claim {id!r}: give the measured value (a number, or per-seed values)")
        given = None if measured is None else _as_values("measured", measured)
        if per_seed is None:
            if isinstance(given, float):
                return given, None, None
            per_seed, given = given, None
        else:
            per_seed = _as_values("per_seed", per_seed)
            if isinstance(per_seed, float):
                per_seed = (per_seed,)
            if isinstance(given, tuple):
                raise ValueError(f"claim {id!r}: per-seed values given twice (measured and per_seed)")
        mean, se = mean_and_se(per_seed)
        if given is not None and not (math.isclose(given, mean, rel_tol=1e-9, abs_tol=1e-12)
                                      or (math.isnan(given) and math.isnan(mean))):
            raise ValueError(f"claim {id!r}: measured={given!r} is not the mean {mean!r} of per_seed; "
                             "give per_seed alone (the measured value is their mean)")
        return mean, per_seed, se

    @staticmethod
    def _control(id: str, control: Any, control_note: Any) -> tuple[float | None, tuple[float, ...] | None]:
        """(control value or None, its per-seed values or None); a control needs its note and vice versa."""
        if not isinstance(control_note, str):
            raise ValueError(f"claim {id!r}: control_note must be a string, got {control_note!r}")
        if control is None:
            if control_note:
                raise ValueError(f"claim {id!r}: control_note given without a control value")
            return None, None
        if not control_note.strip():
            raise ValueError(f"claim {id!r}: a control needs control_note saying where it was measured "
                             "(e.g. 'shuffled labels')")
        values = _as_values("control", control)
        if isinstance(values, float):
            return values, None
        return mean_and_se(values)[0], values

    # ------------------------------------------------------------------ output
    def table_markdown(self) -> str:
        """The claims as a Markdown table (measured, predicted, status)."""
        rows = ["| claim | statement | measured | predicted | status |", "|---|---|---|---|---|"]
        for c in self.claims:
            within = "" if c.status != RECORDED else (" (within)" if c.within else " (outside)")
            if c.known_failure and not c.within:
                within += " (known, explained in the text)"
            cells = [f"`{c.id}`", c.statement, f"{c.measured:.4g}", c.prediction_text, f"{STATUS_MARK[c.status]}{within}"]
            # a bare | inside a cell (|a - b| in a statement) would start a new column
            rows.append("| " + " | ".join(str(x).replace("|", "\\|").replace("\n", " ") for x in cells) + " |")
        return "\n".join(rows)

    def report(self):
        """Display the claims table (rich in a notebook, plain text elsewhere) and return it."""
        text = self.table_markdown()
        try:
            from IPython.display import Markdown, display

            display(Markdown(text))
        except ImportError:  # plain Python
            print(text)
        return text

    def results(self) -> dict[str, Any]:
        """The machine-readable record of this chapter run."""
        return {
            "chapter": self.chapter,
            "scale": self.scale,
            "seed": self.seed,
            "parameters": self.parameters,
            "wall_time_s": round(time.perf_counter() - self._t0, 3),
            "finished_at": now_iso(),
            "git_commit": git_commit(),
            "versions": package_versions(),
            "device": device_description(),
            "run_context": run_context(),
            "claims": [asdict(c) for c in self.claims],
        }

    def save(self, directory: str | os.PathLike | None = None) -> Path:
        """Write ``<directory>/<chapter>.json``; the directory defaults to ``$OVERPARAM_RESULTS_DIR``
        or ``<repo>/_build/results``."""
        folder = Path(directory or os.environ.get(RESULTS_DIR_ENV) or repo_root() / "_build" / "results")
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.chapter}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.results(), indent=2, default=str))
        tmp.replace(path)
        return path

    def failures(self) -> list[Claim]:
        """Claims that failed and are not explained as known failures."""
        return [c for c in self.claims if c.blocking]
