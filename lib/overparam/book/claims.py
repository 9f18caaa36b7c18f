"""Claims: a chapter's central results as checkable statements.

A claim is a measured number next to what theory predicts (a value with an
absolute tolerance, or an interval) and the smallest scale at which the
prediction is expected to hold. Below that scale (e.g. at ``smoke``) the claim
is recorded but not enforced. Tolerances are fixed in the chapter source before
the experiment runs; a failing claim is reported, never loosened.

Each executed chapter writes one JSON file: its claims plus provenance
(versions, device, seed, scale, wall time, git commit). The book build collects
these files into the scorecard and provenance pages.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from overparam.book.provenance import device_description, git_commit, now_iso, package_versions, repo_root
from overparam.book.scales import check_scale, scale_rank

RESULTS_DIR_ENV = "OVERPARAM_RESULTS_DIR"
PASS, FAIL, RECORDED = "pass", "fail", "recorded"
# How a status reads in the Markdown tables (a chapter's report and the scorecard).
STATUS_MARK = {PASS: "✅ pass", FAIL: "❌ **FAIL**", RECORDED: "○ recorded"}


@dataclass(frozen=True)
class Claim:
    """One checked statement. ``status`` is pass/fail, or ``recorded`` below ``holds_from``."""

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

    def __repr__(self) -> str:
        """One line, as a notebook shows the claim a cell ends with."""
        verdict = {PASS: "pass", FAIL: "FAIL", RECORDED: "recorded"}[self.status]
        if self.status == RECORDED:
            verdict += f" (within; enforced from {self.holds_from})" if self.within else \
                f" (outside; enforced from {self.holds_from})"
        if self.known_failure and not self.within:
            verdict += " (known failure, explained in the text)"
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


def evaluate(measured: float, predicted: float | None, tolerance: float | None, interval) -> tuple[bool, str]:
    """Whether ``measured`` agrees with the prediction, and a note when it cannot."""
    if not math.isfinite(measured):
        return False, "measurement is not finite (diverged or undefined)"
    if interval is not None:
        lo, hi = interval
        return (lo is None or measured >= lo) and (hi is None or measured <= hi), ""
    return abs(measured - predicted) <= tolerance, ""


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
        measured: Any,
        *,
        predicted: float | None = None,
        tolerance: float | None = None,
        interval: tuple[float | None, float | None] | None = None,
        holds_from: str = "ci",
        details: dict[str, Any] | None = None,
        known_failure: str = "",
    ) -> Claim:
        """Record a claim: give ``predicted`` and ``tolerance`` (absolute), or ``interval=(lo, hi)``.

        Either end of the interval may be ``None`` (open). ``holds_from`` is the
        smallest scale at which the prediction is expected to hold.

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
        value = _as_float("measured", measured)
        within, note = evaluate(value, predicted, tolerance, interval)
        enforced = scale_rank(self.scale) >= scale_rank(holds_from)
        status = (PASS if within else FAIL) if enforced else RECORDED
        if not enforced:
            note = (note + "; " if note else "") + f"not enforced below scale {holds_from!r}"
        if known_failure and within:
            note = (note + "; " if note else "") + "marked as a known failure but it holds now: remove the marker"
        c = Claim(id, statement, value, predicted, tolerance, interval, holds_from, self.scale, status, within, note,
                  dict(details or {}), str(known_failure))
        self.claims.append(c)
        return c

    # ------------------------------------------------------------------ output
    def table_markdown(self) -> str:
        """The claims as a Markdown table (measured, predicted, status)."""
        rows = ["| claim | statement | measured | predicted | status |", "|---|---|---|---|---|"]
        for c in self.claims:
            within = "" if c.status != RECORDED else (" (within)" if c.within else " (outside)")
            if c.known_failure and not c.within:
                within += " (known, explained in the text)"
            rows.append(f"| `{c.id}` | {c.statement} | {c.measured:.4g} | {c.prediction_text} | {STATUS_MARK[c.status]}{within} |")
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
