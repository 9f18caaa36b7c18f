"""overparam: the shared library of the *Overparameterized* executable textbook.

The package is layered; imports go one way (upwards never, sideways only within a layer):

* ``overparam.models``, ``overparam.taylor``: the one model description and its Taylor models;
* ``overparam.kernels`` (empirical, analytic, regression, spectra), ``overparam.curvature``,
  ``overparam.training`` (the one training loop), ``overparam.data``, ``overparam.stats``;
* ``overparam.experiments``: one module per chapter topic, built on the layers below;
* ``overparam.derivations``: the SymPy derivations, beside the numerics they are checked against;
* ``overparam.book``: the book machinery (scales, claims, runner, build, PDF, exercises); no
  science module imports it.

Importing this package imports nothing else (not JAX, not the book machinery).
"""

__version__ = "0.1.0"
