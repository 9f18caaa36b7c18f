"""Helpers shared by several test files (imported as ``from _support import ...``)."""

import shutil
from pathlib import Path

import jax.numpy as jnp
import numpy as np

# The front matter of a jupytext MyST notebook, for tests that write small chapters of their own.
MYST_HEADER = """---
jupytext:
  text_representation:
    extension: .md
    format_name: myst
kernelspec:
  display_name: Python 3
  language: python
  name: python3
---
"""


def normal(shape, seed=0):
    """Test data from numpy: no JAX PRNG kernel to compile for each shape."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))


REPO = Path(__file__).resolve().parents[1]


def assert_local(urls):
    """Every URL a page requested (HTTP and WebSocket) stayed on 127.0.0.1."""
    outside = [u for u in urls if not u.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "about:"))]
    assert not outside, f"requests left 127.0.0.1: {outside[:5]}"

# A tiny chapter for tests of the runner and the sweep; {body} goes before its last claim.
CHAPTER = MYST_HEADER + """
# A tiny chapter

```{{code-cell}} ipython3
:tags: [parameters]
scale = "ci"
seed = 0
rate = 0.5
```

```{{code-cell}} ipython3
from overparam.book import ClaimRecorder
claims = ClaimRecorder("{cid}", scale=scale, seed=seed)
{body}
claims.claim("half", "rate is one half", rate, predicted=0.5, tolerance=1e-9)
claims.save()
```
"""


def make_root(tmp_path: Path, chapters: dict[str, str]) -> Path:
    """A throw-away book root with the given chapters (stem -> extra code) and a copy of lib/."""
    root = tmp_path / "book"
    (root / "chapters").mkdir(parents=True)
    shutil.copytree(REPO / "lib", root / "lib", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "_toc.yml", "requirements.txt", "requirements-runtime.txt", "constraints.txt"):
        shutil.copyfile(REPO / name, root / name)
    for stem, body in chapters.items():
        (root / "chapters" / f"{stem}.md").write_text(CHAPTER.format(cid=stem[:2], body=body))
    return root
