"""Data sets of the book: synthetic inputs and targets, and three small real data sets, all offline.

Shapes: inputs x (N, d), targets y (N, K). Classification targets are one-hot (N, C), or
+-1 (N, 1) for two classes, so that every data set can be fit with ``mse_loss``. Synthetic
data take explicit ``jax.random`` keys; the loaders of fixed data sets take an int seed
for the shuffle and split.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from overparam.models import MLPSpec

# ------------------------------------------------------------------------------------ container


@partial(
    jax.tree_util.register_dataclass, data_fields=["x_train", "y_train", "x_test", "y_test"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train and test arrays: x_train (N, d), y_train (N, K), x_test (M, d), y_test (M, K).

    Inputs may have more trailing axes (e.g. images (N, 32, 32, 3)); rows always index examples.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array

    def __post_init__(self):
        arrays = (self.x_train, self.y_train, self.x_test, self.y_test)
        if not all(hasattr(a, "shape") for a in arrays):
            return  # rebuilt by jax.tree / vmap with placeholders (e.g. in_axes): nothing to check
        for split, x, y in (("train", *arrays[:2]), ("test", *arrays[2:])):
            if y.ndim != 2 or x.shape[0] != y.shape[0]:
                raise ValueError(
                    f"x_{split} has shape {x.shape} and y_{split} has shape {y.shape}; "
                    "expected x (N, ...) and y (N, K) with the same N"
                )
        if self.x_train.shape[1:] != self.x_test.shape[1:] or self.y_train.shape[1:] != self.y_test.shape[1:]:
            raise ValueError(
                f"train shapes {self.x_train.shape}, {self.y_train.shape} and test shapes "
                f"{self.x_test.shape}, {self.y_test.shape} differ beyond the first axis"
            )

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_test(self) -> int:
        return self.x_test.shape[0]


def split_dataset(key, x, y, n_train: int, n_test: int | None = None) -> Dataset:
    """Random split of (x (N, ...), y (N, K)) into n_train and n_test (default: the rest) examples."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has shape {x.shape} and y has shape {y.shape}; expected the same number of rows")
    n_test = x.shape[0] - n_train if n_test is None else n_test
    if n_train < 1 or n_test < 0 or n_train + n_test > x.shape[0]:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: need n_train >= 1 and n_train + n_test <= {x.shape[0]}")
    perm = jax.random.permutation(key, x.shape[0])
    train, test = perm[:n_train], perm[n_train : n_train + n_test]
    return Dataset(x[train], y[train], x[test], y[test])


# ------------------------------------------------------------------------------------ synthetic


def gaussian_inputs(key, n: int, d: int):
    """x (n, d) with i.i.d. N(0, 1) entries, so E ||x||^2 = d."""
    return jax.random.normal(key, (n, d), jnp.result_type(float))


def sphere_inputs(key, n: int, d: int, radius: float | None = None):
    """x (n, d) uniform on the sphere of radius ``radius`` (default sqrt(d), matching ``gaussian_inputs``)."""
    x = gaussian_inputs(key, n, d)
    radius = jnp.sqrt(d) if radius is None else radius
    return radius * x / jnp.linalg.norm(x, axis=1, keepdims=True)


def teacher_targets(key, x, widths, activation="relu", noise: float = 0.0, parameterization: str = "ntk"):
    """y (N, d_out) = teacher(x) + noise * N(0, 1): a random ``MLPSpec(widths)`` with sigma_w=1, sigma_b=0.

    widths = (d_in, ..., d_out) with d_in = x.shape[1]. The teacher is the network initialized
    by ``spec.init`` from the first of ``jax.random.split(key)``; the noise uses the second.
    """
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] != widths[0]:
        raise ValueError(f"x has shape {x.shape}; teacher widths={tuple(widths)} expect (N, {widths[0]})")
    teacher_key, noise_key = jax.random.split(key)
    teacher = MLPSpec(tuple(widths), activation, parameterization)
    y = teacher(teacher.init(teacher_key), x)
    return y + noise * jax.random.normal(noise_key, y.shape, y.dtype)


POLYNOMIALS = {
    "linear": (1, lambda x: x[:, 0]),
    "hermite2": (1, lambda x: (x[:, 0] ** 2 - 1) / jnp.sqrt(2.0)),
    "hermite3": (1, lambda x: (x[:, 0] ** 3 - 3 * x[:, 0]) / jnp.sqrt(6.0)),
    "x1x2": (2, lambda x: x[:, 0] * x[:, 1]),
    "x1x2x3": (3, lambda x: x[:, 0] * x[:, 1] * x[:, 2]),
}


def low_rank_polynomial(x, kind: str = "x1x2"):
    """Targets y (N, 1) depending on the first few coordinates of x (N, d).

    kind: "linear" x1; "hermite2" (x1^2 - 1)/sqrt 2; "hermite3" (x1^3 - 3 x1)/sqrt 6; "x1x2";
    "x1x2x3". For x ~ N(0, I) each has mean 0 and variance 1 (orthonormal Hermite terms).
    """
    if kind not in POLYNOMIALS:
        raise ValueError(f"kind={kind!r} is not known; allowed: {', '.join(POLYNOMIALS)}")
    needed, fn = POLYNOMIALS[kind]
    x = jnp.asarray(x)
    if x.ndim != 2 or x.shape[1] < needed:
        raise ValueError(f"x has shape {x.shape}; kind={kind!r} needs (N, d) with d >= {needed}")
    return fn(x)[:, None]


# ---------------------------------------------------------------------------- fixed data sets


def class_targets(labels, num_classes: int):
    """Integer labels (N,) in 0..C-1 -> one-hot (N, C), or +-1 (N, 1) when C == 2 (class 1 -> +1)."""
    labels = np.asarray(labels)
    if num_classes == 2:
        return (2.0 * labels - 1.0)[:, None]
    return np.eye(num_classes)[labels]


def _standardize(x_train, x_test):
    # Statistics from the training split only; constant features (e.g. border pixels) stay 0.
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return (x_train - mean) / std, (x_test - mean) / std


def _split_arrays(x, labels, n_train, n_test, seed, num_classes, dtype, standardize=True):
    if n_train < 1 or n_test < 0 or n_train + n_test > x.shape[0]:
        raise ValueError(f"n_train={n_train}, n_test={n_test}: need n_train >= 1 and n_train + n_test <= {x.shape[0]}")
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    train, test = perm[:n_train], perm[n_train : n_train + n_test]
    x_train, x_test = x[train].astype(np.float64), x[test].astype(np.float64)
    if standardize:
        x_train, x_test = _standardize(x_train, x_test)
    y = class_targets(labels, num_classes)
    return Dataset(*(jnp.asarray(a, dtype) for a in (x_train, y[train], x_test, y[test])))


def _select_classes(x, labels, classes):
    if classes is None:
        return x, labels, int(labels.max()) + 1
    classes = list(classes)
    if len(classes) < 2 or len(set(classes)) != len(classes) or not set(classes) <= set(np.unique(labels)):
        raise ValueError(f"classes={classes!r} must be at least two distinct labels from {sorted(set(labels.tolist()))}")
    keep = np.isin(labels, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    return x[keep], np.array([relabel[c] for c in labels[keep]]), len(classes)


def load_digits_data(n_train: int, n_test: int, seed: int = 0, classes=None, dtype=jnp.float32) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1797 images): x (N, 64) standardized with train statistics.

    classes: None (all ten, one-hot targets (N, 10)) or a list of labels, relabelled in the
    given order; two classes give +-1 targets (N, 1), the second class +1.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, labels, num_classes = _select_classes(digits.data, digits.target, classes)
    return _split_arrays(x, labels, n_train, n_test, seed, num_classes, dtype)


def load_mnist1d_data(n_train: int, n_test: int, seed: int = 0, dtype=jnp.float32) -> Dataset:
    """MNIST-1D (Greydanus 2020) generated locally: x (N, 40), one-hot y (N, 10); never downloads.

    Calls ``mnist1d.data.make_dataset`` with the package defaults except num_samples
    (n_train + n_test rounded up to a multiple of 10) and seed; ``get_dataset``, which
    downloads, is not used. The generator seeds numpy's and Python's global random state;
    both are restored afterwards. Inputs are as generated (already centered, unit variance).
    """
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    total = n_train + n_test
    args.num_samples = -(-total // 10) * 10
    args.train_split = 1.0
    args.seed = seed
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        generated = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return _split_arrays(generated["x"], generated["y"], n_train, n_test, seed, 10, dtype, standardize=False)


CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _read_cifar_batch(path):
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    images = np.asarray(batch[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, np.asarray(batch[b"labels"])


def load_cifar10(path, n_train: int | None = None, n_test: int | None = None, flatten: bool = False, dtype=jnp.float32) -> Dataset:
    """CIFAR-10 from the python-pickle batches in ``path`` (the ``cifar-10-batches-py`` folder).

    Expects ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``; nothing is downloaded.
    Returns x (N, 32, 32, 3) in [0, 1] (or (N, 3072) with flatten=True, same HWC order) and
    one-hot y (N, 10); the first n_train / n_test examples of each split (default: all).
    """
    missing = [name for name in CIFAR10_FILES if not os.path.isfile(os.path.join(path, name))]
    if missing:
        raise FileNotFoundError(
            f"CIFAR-10 not found in {os.fspath(path)!r}: missing {', '.join(missing)}; expected the python "
            f"version's folder (cifar-10-batches-py) with {', '.join(CIFAR10_FILES)}"
        )
    train = [_read_cifar_batch(os.path.join(path, name)) for name in CIFAR10_FILES[:-1]]
    x_train, y_train = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    x_test, y_test = _read_cifar_batch(os.path.join(path, CIFAR10_FILES[-1]))
    x_train, y_train, x_test, y_test = x_train[:n_train], y_train[:n_train], x_test[:n_test], y_test[:n_test]
    if flatten:
        x_train, x_test = x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)
    scaled = lambda images: jnp.asarray(images.astype(np.float32) / 255.0, dtype)
    return Dataset(
        scaled(x_train), jnp.asarray(class_targets(y_train, 10), dtype),
        scaled(x_test), jnp.asarray(class_targets(y_test, 10), dtype),
    )
