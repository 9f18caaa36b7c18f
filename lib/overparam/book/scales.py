"""Scales: one parameter sets every size in a chapter.

``smoke`` runs in seconds (tests), ``ci`` is the default book build (2-core CPU,
at most a few minutes per chapter), ``full`` is paper scale (meant for a GPU).
A chapter declares its sizes for each scale once; ``select_scale`` returns the
set for the scale it is run at.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

SCALES = ("smoke", "ci", "full")


def check_scale(scale: str) -> str:
    """Return ``scale`` if it is known, else raise ValueError listing the allowed ones."""
    if scale not in SCALES:
        raise ValueError(f"scale={scale!r} is not a known scale; allowed: {', '.join(SCALES)}")
    return scale


def scale_rank(scale: str) -> int:
    """Order of scales: smoke (0) < ci (1) < full (2)."""
    return SCALES.index(check_scale(scale))


class Sizes(Mapping):
    """Read-only sizes of one scale; attribute and item access (``cfg.widths``, ``cfg['widths']``)."""

    def __init__(self, scale: str, values: Mapping[str, Any]):
        self._scale = scale
        self._values = MappingProxyType(dict(values))

    @property
    def scale(self) -> str:
        return self._scale

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(
                f"size {name!r} is not declared for scale {self._scale!r}; declared: {', '.join(self._values)}"
            ) from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Sizes[{self._scale}]({inner})"


def select_scale(scale: str, **per_scale: Mapping[str, Any]) -> Sizes:
    """Pick the sizes declared for ``scale``.

    Every scale in ``SCALES`` must be declared, with the same keys, so that a
    chapter cannot silently lack a size at one scale::

        cfg = select_scale(scale, smoke=dict(widths=[16, 64]), ci=dict(widths=[...]), full=dict(...))
    """
    check_scale(scale)
    missing = [s for s in SCALES if s not in per_scale]
    extra = [s for s in per_scale if s not in SCALES]
    if missing or extra:
        raise ValueError(
            f"select_scale needs exactly the scales {SCALES}; missing: {missing or 'none'}, unknown: {extra or 'none'}"
        )
    keys = {s: set(v) for s, v in per_scale.items()}
    ref = keys[SCALES[0]]
    for s, k in keys.items():
        if k != ref:
            raise ValueError(
                f"scale {s!r} declares sizes {sorted(k)} but {SCALES[0]!r} declares {sorted(ref)}; "
                "every scale must declare the same sizes"
            )
    return Sizes(scale, per_scale[scale])
