"""Student edition and autograding: stubs fail the checks, solutions pass, bad submissions are graded."""

import json
from pathlib import Path

import nbformat
import pytest

from overparam.book.exercises import (build_student_edition, grade_notebook, parse_exercises, student_text,
                                 verify_solutions_and_stubs)
from overparam.book.runner import discover_chapters

from _support import MYST_HEADER

CHAPTERS = discover_chapters()

TOY = MYST_HEADER + '''
# Toy

```{code-cell} ipython3
:tags: [parameters]
scale = "ci"
seed = 0
```

```{code-cell} ipython3
base = 3
```

```{exercise} Square
:label: ex-99-square
Compute `answer_square`, the square of `base`.
```

```{solution-start} ex-99-square
:class: dropdown
```
Multiply.
```{code-cell} ipython3
answer_square = base * base
```
```{solution-end}
```

```{code-cell} ipython3
:tags: [remove-cell, check]
assert answer_square == 9
```

```{exercise} Pair
:label: ex-99-pair
Set `answer_a, answer_b` to 1 and 2.
```

```{solution-start} ex-99-pair
:class: dropdown
```
```{code-cell} ipython3
answer_a, answer_b = 1, 2
```
```{solution-end}
```

```{code-cell} ipython3
:tags: [remove-cell, check]
assert (answer_a, answer_b) == (1, 2)
```
'''


@pytest.fixture
def toy(tmp_path):
    path = tmp_path / "99_toy.md"
    path.write_text(TOY)
    return path


def test_parse_exercises_finds_answers_and_checks():
    exs = parse_exercises(TOY)
    assert [e.label for e in exs] == ["ex-99-square", "ex-99-pair"]
    assert exs[0].answers == ("answer_square",) and exs[1].answers == ("answer_a", "answer_b")
    assert "answer_square == 9" in exs[0].checks and "(1, 2)" in exs[1].checks


def test_student_text_removes_solutions_and_checks():
    text = student_text(TOY, scale="smoke")
    assert "base * base" not in text and "assert" not in text and "solution-start" not in text
    assert "answer_square = None" in text and "answer_a = None" in text and "exercise: ex-99-pair" in text
    assert 'scale = "smoke"' in text and "**Exercise (Square).**" in text


def test_student_edition_notebooks_have_no_outputs_or_solutions(tmp_path):
    written = build_student_edition(CHAPTERS, tmp_path)
    assert len(written) == len(CHAPTERS)
    for path in written:
        nb = nbformat.read(path, as_version=4)
        stubs = [c for c in nb.cells if c.cell_type == "code" and "exercise" in c.metadata]
        assert len(stubs) >= 3, f"{path.name}: every chapter has at least three exercises"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
        assert not any("check" in c.metadata.get("tags", []) for c in nb.cells)


@pytest.mark.slow
def test_grading_reports_each_failure_and_continues(toy, tmp_path):
    exs = parse_exercises(TOY)
    student = build_student_edition({"99": toy}, tmp_path / "student")[0]
    # untouched stubs fail every check
    report = grade_notebook(student, exs)
    assert [r.passed for r in report.results] == [False, False] and report.score == 0
    # a correct answer to one, a raising cell in the other
    nb = nbformat.read(student, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("exercise") == "ex-99-square":
            cell.source = "answer_square = base ** 2"
        if cell.metadata.get("exercise") == "ex-99-pair":
            cell.source = "answer_a, answer_b = 1, undefined_name"
    filled = tmp_path / "filled.ipynb"
    nbformat.write(nb, filled)
    report = grade_notebook(filled, exs)
    assert report.results[0].passed and not report.results[1].passed
    assert "NameError" in report.results[1].reason and report.score == 0.5
    # an exercise deleted from the submission
    nb.cells = [c for c in nb.cells if c.metadata.get("exercise") != "ex-99-pair"]
    nbformat.write(nb, filled)
    report = grade_notebook(filled, exs)
    assert report.results[1].reason == "exercise missing from the submission" and report.results[0].passed
    # a file that is not a notebook
    broken = tmp_path / "broken.ipynb"
    broken.write_text("{not json")
    report = grade_notebook(broken, exs)
    assert not any(r.passed for r in report.results) and "does not parse" in report.results[0].reason


@pytest.mark.slow
def test_cli_grade_writes_json(toy, tmp_path, monkeypatch):
    from overparam.book import exercises, runner
    from overparam.book.cli import main

    student = build_student_edition({"99": toy}, tmp_path / "subs")[0]
    monkeypatch.setattr(runner, "resolve_chapter", lambda chapter, root=None: toy)
    out = tmp_path / "grades.json"
    assert main(["grade", str(student.parent), "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data[0]["score"] == 0 and len(data[0]["exercises"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("cid", list(CHAPTERS))
def test_solutions_pass_and_stubs_fail_their_checks(cid):
    outcome = verify_solutions_and_stubs(CHAPTERS[cid], scale="smoke")
    assert len(outcome) >= 3, f"chapter {cid}: at least three exercises must declare checks"
    for label, (stub_fails, solution_passes) in outcome.items():
        assert stub_fails, f"{label}: the student stub passes the checks (they cannot fail)"
        assert solution_passes, f"{label}: the instructor's solution fails its own checks"


@pytest.mark.slow
def test_exercise_kernel_shares_the_books_compilation_cache(tmp_path):
    """verify_solutions_and_stubs runs the student edition with the book's JAX cache, as the chapter's own run does."""
    from overparam.book.runner import jax_cache_environment

    source = tmp_path / "chapters" / "99_cache.md"
    source.parent.mkdir()
    expected = jax_cache_environment(tmp_path)["JAX_COMPILATION_CACHE_DIR"]
    source.write_text(TOY.split("```{exercise} Pair")[0] + f'''
```{{exercise}} Cache
:label: ex-99-cache
Set `answer_cache` to the compilation cache folder.
```

```{{solution-start}} ex-99-cache
:class: dropdown
```
```{{code-cell}} ipython3
import os
answer_cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
```
```{{solution-end}}
```

```{{code-cell}} ipython3
:tags: [remove-cell, check]
assert answer_cache == {expected!r}
```
''')
    outcome = verify_solutions_and_stubs(source, scale="smoke")
    assert outcome == {"ex-99-square": (True, True), "ex-99-cache": (True, True)}
