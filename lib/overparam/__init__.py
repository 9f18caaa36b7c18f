"""overparam: the shared library of the *Overparameterized* executable textbook.

Chapters import from the submodules (``overparam.models``, ``overparam.ntk``, ...);
the few names every chapter needs are re-exported here. Importing this package
does not import JAX.
"""

from .claims import Claim, ClaimRecorder
from .scales import SCALES, Sizes, check_scale, select_scale

__all__ = ["Claim", "ClaimRecorder", "SCALES", "Sizes", "check_scale", "select_scale"]
__version__ = "0.1.0"
