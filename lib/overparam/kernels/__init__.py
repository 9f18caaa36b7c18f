"""Kernels of networks: empirical (finite width), analytic (infinite width), regression, spectra.

* ``empirical``: the one empirical tangent-kernel implementation (NTK, per-layer Grams, NNGP).
* ``analytic``: closed-form NNGP/NTK/DEQ kernels of fully connected networks (from an ``MLPSpec``).
* ``regression``: kernel (ridge) regression and its tuning, the GP posterior, linear-model dynamics.
* ``spectra``: eigenvalues of dot-product kernels on the sphere.
"""
