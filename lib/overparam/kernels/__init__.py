"""Kernels of networks: empirical (finite width), analytic (infinite width), regression, spectra.

* ``empirical``: the one empirical tangent-kernel implementation (NTK, per-layer Grams, NNGP).
* ``analytic``: closed-form NNGP/NTK/DEQ kernels of fully connected networks.
* ``regression``: kernel (ridge) regression, the GP posterior and linear-model training dynamics.
* ``ridge``: an RBF kernel and a cross-validated grid search for kernel ridge regression.
* ``spectra``: eigenvalues of dot-product kernels on the sphere.
"""
