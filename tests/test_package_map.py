"""The package's layers: imports go one way, and README's package map lists every module.

Imports are read from the source with ``ast`` (every ``import`` statement, also those inside
functions), so nothing is executed. Layers, from the bottom (see ``lib/overparam/__init__.py``):

* ``models``, ``taylor``: no other module of the package;
* ``kernels/*``, ``curvature``, ``training``, ``data``, ``stats``: only ``models`` and each other;
* ``experiments/*``: the layers below, ``derivations/*`` and each other;
* ``derivations/*``: only each other;
* ``book/*``: anything; no module outside ``book/`` imports it.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIB = ROOT / "lib" / "overparam"

BOTTOM = {"models", "taylor"}
CORE = {"kernels", "curvature", "training", "data", "stats"}
ALLOWED = {  # top-level part of a module -> top-level parts it may import
    **{name: set() for name in BOTTOM},
    **{name: {"models"} | CORE for name in CORE},
    "experiments": BOTTOM | CORE | {"experiments", "derivations"},
    "derivations": {"derivations"},
    "book": None,  # anything
}


def _modules():
    """{dotted name below overparam (e.g. 'kernels.empirical'): path} for every module but the package files."""
    out = {}
    for path in sorted(LIB.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        out[".".join(path.relative_to(LIB).with_suffix("").parts)] = path
    return out


def _imported(path):
    """Top-level parts of the package a file imports ('models', 'kernels', 'book', ...)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "overparam":
                names |= {alias.name for alias in node.names}
            elif node.module.startswith("overparam."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names |= {a.name.split(".")[1] for a in node.names if a.name.startswith("overparam.")}
    return names


def _layer_violations(modules):
    bad = []
    for name, path in modules.items():
        allowed = ALLOWED[name.split(".")[0]]
        if allowed is None:
            continue
        for part in sorted(_imported(path) - allowed):
            bad.append(f"{name} imports overparam.{part}")
    return bad


def test_every_module_belongs_to_a_layer():
    unknown = [name for name in _modules() if name.split(".")[0] not in ALLOWED]
    assert not unknown, f"modules outside the known layers: {unknown}"


def test_imports_go_one_way():
    assert _layer_violations(_modules()) == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The check fails on a core module that imports an experiment or the book machinery."""
    fake = tmp_path / "training.py"
    fake.write_text("def f():\n    from overparam.experiments import mean_field\n    import overparam.book.claims\n")
    assert _layer_violations({"training": fake}) == ["training imports overparam.book",
                                                      "training imports overparam.experiments"]


def _map_rows():
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^## Package map\n(.*?)(?=^## )", text, re.S | re.M)
    assert match, "README.md has no '## Package map' section"
    return re.findall(r"^\| `([a-z_/]+)` \|", match.group(1), re.M)


def test_readme_package_map_lists_every_module_once():
    rows = _map_rows()
    assert len(rows) == len(set(rows)), f"listed twice: {sorted({r for r in rows if rows.count(r) > 1})}"
    listed = {row.replace("/", ".") for row in rows}
    modules = set(_modules())
    assert listed == modules, f"missing from the map: {sorted(modules - listed)}; not modules: {sorted(listed - modules)}"


def _chapter_imports(chapter):
    """Modules below overparam ('kernels.spectra', 'book.plotting', ...) a chapter's code cells import."""
    names = set()
    for cell in re.findall(r"```\{code-cell\}[^\n]*\n(.*?)```", chapter.read_text(), re.S):
        cell = re.sub(r"^---\n.*?\n---\n", "", cell, flags=re.S)  # cell metadata, long form
        cell = re.sub(r"^(:[\w-]+:.*\n)+", "", cell)  # and short form (:tags: [...])
        cell = "\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!")))
        for node in ast.walk(ast.parse(cell)):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("overparam"):
                below = node.module.split(".", 1)[1] if "." in node.module else ""
                names |= {f"{below}.{a.name}".strip(".") for a in node.names} | {below}
            elif isinstance(node, ast.Import):
                names |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("overparam.")}
    return names


def _chapters_listed(cell):
    """Chapter numbers named outside parentheses in a map cell ('01 03 (05)', '01–09')."""
    direct = re.sub(r"\(.*?\)", "", cell)
    listed = set(re.findall(r"\b\d\d\b", direct))
    return listed | {f"{k:02d}" for a, b in re.findall(r"(\d\d)–(\d\d)", direct) for k in range(int(a), int(b) + 1)}


@pytest.mark.parametrize("chapter", sorted((ROOT / "chapters").glob("*.md")), ids=lambda p: p.name[:2])
def test_readme_package_map_names_the_chapters_that_import_a_module(chapter):
    """Every module a chapter imports directly has that chapter in its row of the map (outside the parentheses)."""
    section = re.search(r"^## Package map\n(.*?)(?=^## )", (ROOT / "README.md").read_text(), re.S | re.M).group(1)
    rows = {m.group(1).replace("/", "."): m.group(2)
            for m in re.finditer(r"^\| `([a-z_/]+)` \|.*\| ([^|]*) \|$", section, re.M)}
    imported = _chapter_imports(chapter) & set(rows)
    assert imported, f"{chapter.name}: no import of a mapped module found (is the parser still right?)"
    number = chapter.name[:2]
    for name in sorted(imported):
        assert number in _chapters_listed(rows[name]), (
            f"chapter {number} imports overparam.{name}; its map row says '{rows[name]}'")
    # and the map names no chapter that does not import the module directly
    for name, cell in rows.items():
        if number in _chapters_listed(cell) and name.split(".")[0] != "book":
            assert name in _chapter_imports(chapter), f"the map says chapter {number} imports overparam.{name}; it does not"
