"""The book machinery: scales, claims, chapter runner, HTML/PDF build, downloads, exercises.

A chapter needs only ``from overparam.book import ClaimRecorder, select_scale``. Nothing in the
science layers (models, kernels, training, experiments, derivations) imports this package.
"""

from overparam.book.claims import Claim, ClaimRecorder
from overparam.book.scales import SCALES, Sizes, check_scale, select_scale

__all__ = ["Claim", "ClaimRecorder", "SCALES", "Sizes", "check_scale", "select_scale"]
