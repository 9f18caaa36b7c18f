"""Exercises: the student edition of a chapter, and autograding against the instructor's checks.

Conventions in a chapter source (MyST markdown):

* An exercise is a ``{exercise}`` directive with ``:label: ex-NN-name``.
* Its solution sits between ``{solution-start} ex-NN-name`` and ``{solution-end}``; the
  solution's code cells assign the answers to variables named ``answer_*``.
* Right after the solution, a code cell tagged ``[remove-cell, check]`` holds the checks:
  plain ``assert`` statements on the ``answer_*`` variables (value, shape or property). The
  book build leaves them out; the test suite (``verify_solutions_and_stubs``) runs them against
  the instructor's solutions and against the untouched stubs.

The student edition replaces each solution by a stub cell (metadata ``exercise: <label>``)
that sets every ``answer_*`` to ``None``, and drops the check cells. Grading executes a
submission, then runs each exercise's checks in the same kernel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SOLUTION_RE = re.compile(
    r"```\{solution-start\}\s+(?P<label>\S+)[^\n]*\n(?:[^\n]*\n)*?```\n(?P<body>.*?)```\{solution-end\}\n```\n",
    re.S,
)
CODE_CELL_RE = re.compile(r"```\{code-cell\}[^\n]*\n(?P<src>.*?)^```\s*$", re.S | re.M)
CHECK_CELL_RE = re.compile(r"```\{code-cell\}[^\n]*\n:tags: \[remove-cell, check\]\n(?P<src>.*?)^```\s*\n?", re.S | re.M)
ANSWER_RE = re.compile(r"^((?:answer_\w+\s*,\s*)*answer_\w+)\s*=", re.M)
DIRECTIVE_RE = re.compile(r"^```\{(?P<name>[\w:-]+)\}(?P<arg>[^\n]*)\n(?P<body>.*?)^```\s*$", re.S | re.M)
ROLE_RE = re.compile(r"\{(?:cite:[pt]|cite|prf:ref|ref|numref|doc)\}`(?P<target>[^`]+)`")


@dataclass(frozen=True)
class Exercise:
    """One exercise of a chapter: its label, solution code, answer names and checks."""

    label: str
    solution_code: str
    answers: tuple[str, ...]
    checks: str


def parse_exercises(text: str) -> list[Exercise]:
    """The exercises of a chapter's MyST source, in order."""
    found = []
    matches = list(SOLUTION_RE.finditer(text))
    for i, m in enumerate(matches):
        code = "\n".join(c.group("src") for c in CODE_CELL_RE.finditer(m.group("body")))
        following = text[m.end(): matches[i + 1].start() if i + 1 < len(matches) else len(text)]
        check = CHECK_CELL_RE.search(following)
        if check and "```{exercise}" in following[: check.start()]:
            check = None  # that check belongs to a later exercise
        names = [n.strip() for lhs in ANSWER_RE.findall(code) for n in lhs.split(",")]
        answers = tuple(dict.fromkeys(names))
        found.append(Exercise(m.group("label"), code.strip(), answers, check.group("src").strip() if check else ""))
    return found


def stub_source(ex: Exercise) -> str:
    """The code a student starts from: each answer set to None."""
    lines = [f"# Exercise {ex.label}: write your solution here and assign your answers below."]
    lines += [f"{name} = None" for name in ex.answers] or ["# (this exercise is graded by reading; no answer variables)"]
    return "\n".join(lines)


def _plain_markdown(text: str) -> str:
    """Directives (theorems, exercises, notes) as plain Markdown that Jupyter renders."""

    def directive(m):
        name, arg, body = m.group("name"), m.group("arg").strip(), m.group("body")
        if name == "code-cell":
            return m.group(0)
        body = "\n".join(line for line in body.splitlines() if not re.match(r"^:[\w-]+:", line)).strip()
        title = name.split(":")[-1].capitalize() + (f" ({arg})" if arg else "")
        return "> **" + title + ".** " + body.replace("\n", "\n> ") + "\n\n"

    text = DIRECTIVE_RE.sub(directive, text)
    return ROLE_RE.sub(lambda m: f"[{m.group('target')}]", text)


def student_text(text: str, scale: str | None = None) -> str:
    """The student edition of a chapter's MyST source (solutions out, stubs in, checks out)."""
    exercises = {e.label: e for e in parse_exercises(text)}

    def stub(m):
        ex = exercises[m.group("label")]
        return f"```{{code-cell}} ipython3\n---\nexercise: {ex.label}\n---\n{stub_source(ex)}\n```\n"

    text = SOLUTION_RE.sub(stub, text)
    text = CHECK_CELL_RE.sub("", text)
    if scale is not None:
        text = re.sub(r'^scale = "[a-z]+"', f'scale = "{scale}"', text, count=1, flags=re.M)
    return _plain_markdown_outside_cells(text)


def _plain_markdown_outside_cells(text: str) -> str:
    parts = re.split(r"(```\{code-cell\}.*?^```\s*$)", text, flags=re.S | re.M)
    return "".join(p if p.startswith("```{code-cell}") else _plain_markdown(p) for p in parts)


def build_student_edition(chapters: dict[str, Path], out: Path, scale: str | None = None) -> list[Path]:
    """Write ``<out>/<chapter>.ipynb`` (student edition, no outputs) for each chapter source."""
    import jupytext

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for source in chapters.values():
        nb = jupytext.reads(student_text(source.read_text(), scale), fmt="md:myst")
        nb.metadata.pop("jupytext", None)
        path = out / f"{source.stem}.ipynb"
        jupytext.write(nb, path, fmt="ipynb")
        written.append(path)
    return written


# ------------------------------------------------------------------------------------ grading
@dataclass
class ExerciseResult:
    label: str
    passed: bool
    reason: str = ""


@dataclass
class GradeReport:
    """Per-exercise outcome for one submission; ``score`` = passed / total."""

    submission: str
    results: list[ExerciseResult] = field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(r.passed for r in self.results) / len(self.results) if self.results else 0.0

    def text(self) -> str:
        lines = [f"{self.submission}: score {sum(r.passed for r in self.results)}/{len(self.results)}"]
        lines += [f"  {'PASS' if r.passed else 'FAIL'}  {r.label}" + (f"  ({r.reason})" if r.reason else "")
                  for r in self.results]
        return "\n".join(lines)


def _error_of(outputs) -> str | None:
    for out in outputs:
        if out.get("output_type") == "error":
            return f"{out.get('ename')}: {out.get('evalue')}"
    return None


def _set_scale(nb, scale: str) -> None:
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            cell.source = re.sub(r'^scale\s*=.*$', f'scale = "{scale}"', cell.source, count=1, flags=re.M)


class _Kernel:
    """A kernel running one notebook's cells in order, errors captured per cell."""

    def __init__(self, nb, cwd: Path, timeout: int):
        from nbclient import NotebookClient

        self.nb = nb
        self.client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                     resources={"metadata": {"path": str(cwd)}})

    def __enter__(self):
        self._ctx = self.client.setup_kernel()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)

    def run_cell(self, cell, index: int) -> str | None:
        self.client.execute_cell(cell, index)
        return _error_of(cell.get("outputs", []))

    def run_source(self, source: str) -> str | None:
        import nbformat

        cell = nbformat.v4.new_code_cell(source)
        self.nb.cells.append(cell)
        return self.run_cell(cell, len(self.nb.cells) - 1)


def grade_notebook(path: Path, exercises: list[Exercise], scale: str = "smoke", timeout: int = 900,
                   cwd: Path | None = None) -> GradeReport:
    """Execute a submission and run each exercise's checks; every problem becomes a failed exercise.

    A notebook that does not parse fails every exercise; a missing exercise cell, a cell that
    raises or a failing check fails that exercise only, with the reason. Grading continues.
    """
    import nbformat

    report = GradeReport(Path(path).name)
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:  # not JSON, not a notebook, unreadable
        report.results = [ExerciseResult(e.label, False, f"notebook does not parse: {type(exc).__name__}: {exc}")
                          for e in exercises]
        return report
    _set_scale(nb, scale)
    stub_cells = {c.metadata.get("exercise"): i for i, c in enumerate(nb.cells) if c.cell_type == "code"}
    cell_errors: dict[int, str] = {}
    with _Kernel(nb, Path(cwd or Path(path).parent), timeout) as kernel:
        for i, cell in enumerate(list(nb.cells)):
            if cell.cell_type == "code":
                err = kernel.run_cell(cell, i)
                if err:
                    cell_errors[i] = err
        for ex in exercises:
            if ex.label not in stub_cells:
                report.results.append(ExerciseResult(ex.label, False, "exercise missing from the submission"))
                continue
            if stub_cells[ex.label] in cell_errors:
                report.results.append(ExerciseResult(ex.label, False, f"your cell raised {cell_errors[stub_cells[ex.label]]}"))
                continue
            if not ex.checks:
                report.results.append(ExerciseResult(ex.label, True, "no automatic checks (graded by reading)"))
                continue
            err = kernel.run_source(ex.checks)
            report.results.append(ExerciseResult(ex.label, err is None, f"check failed: {err}" if err else ""))
    return report


def verify_solutions_and_stubs(source: Path, scale: str = "smoke", timeout: int = 900) -> dict[str, tuple[bool, bool]]:
    """For each exercise with checks: (stub fails its checks, instructor's solution passes them).

    Runs the student edition once; after the checks fail on the stubs, it executes the
    instructor's solution code in the same kernel and runs the checks again.
    """
    import jupytext

    from overparam.book.runner import kernel_environment, scoped_environment

    exercises = [e for e in parse_exercises(source.read_text()) if e.checks]
    nb = jupytext.reads(student_text(source.read_text(), scale), fmt="md:myst")
    outcome = {}
    # the kernel is set up as the chapter's own run at this scale: what that run compiled is read back
    env = kernel_environment(scale, source.resolve().parents[1])
    with scoped_environment(**env), _Kernel(nb, source.parent, timeout) as kernel:
        for i, cell in enumerate(list(nb.cells)):
            if cell.cell_type == "code":
                err = kernel.run_cell(cell, i)
                if err and "exercise" not in cell.metadata:
                    raise RuntimeError(f"{source.stem}: student edition cell {i} raised {err}")
        for ex in exercises:
            stub_fails = kernel.run_source(ex.checks) is not None
            sol_err = kernel.run_source(ex.solution_code)
            if sol_err:
                raise RuntimeError(f"{source.stem}: solution of {ex.label} raised {sol_err}")
            outcome[ex.label] = (stub_fails, kernel.run_source(ex.checks) is None)
    return outcome
