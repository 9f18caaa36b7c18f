"""Redundant representations: groups of neurons with near-identical activity in a wide layer.

Doimo et al. (NeurIPS 2022) find that the neurons of a wide last hidden layer, trained with
regularization to zero training error, split into groups carrying the same information.
Here a *group* is a cluster of live neurons whose activities over a set of inputs are
strongly correlated: average-linkage hierarchical clustering on the distance 1 - corr, cut
at 1 - ``threshold`` (every group has mean pairwise Pearson correlation >= threshold).
Pearson correlation ignores each neuron's scale and offset, so copies of one feature with
different weight norms count as one group. Dead neurons (constant activity on the inputs)
belong to no group.

Conventions: activities ``acts`` are (N inputs, W neurons); labels are ints 0..G-1 per neuron,
-1 for dead ones. The training helpers use an ``overparam.models.MLPSpec`` in the standard
parameterization and ``overparam.training``; weight decay is L2 in the loss
(cross-entropy + lam * sum of squared parameters, biases included).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from overparam import training
from overparam.models import MLPSpec


# ------------------------------------------------------------------------------ grouping


def live_neurons(acts, tol: float = 1e-6):
    """Boolean (W,): neurons whose activity varies over the inputs (std > tol * max std)."""
    acts = _check_acts(acts)
    std = acts.std(axis=0)
    return std > tol * max(float(std.max()), 1e-30)


def _check_acts(acts):
    acts = np.asarray(acts, dtype=np.float64)
    if acts.ndim != 2 or acts.shape[0] < 3:
        raise ValueError(f"acts has shape {acts.shape}; expected (N inputs >= 3, W neurons)")
    return acts


def activity_correlation(acts):
    """Pearson correlation (W_live, W_live) between the live neurons' activities, and their mask (W,)."""
    acts = _check_acts(acts)
    live = live_neurons(acts)
    a = acts[:, live]
    a = (a - a.mean(0)) / a.std(0)
    return (a.T @ a) / a.shape[0], live


def group_neurons(acts, threshold: float = 0.9):
    """Group labels (W,): neurons with mean pairwise activity correlation >= threshold share a label.

    Average-linkage clustering of the live neurons on 1 - corr, cut at 1 - threshold;
    dead neurons get -1. threshold in (0, 1).
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold={threshold!r} must be in (0, 1)")
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    corr, live = activity_correlation(acts)
    labels = np.full(live.shape, -1, dtype=int)
    n_live = int(live.sum())
    if n_live == 1:
        labels[live] = 0
    elif n_live > 1:
        dist = np.clip(1.0 - corr, 0.0, 2.0)
        np.fill_diagonal(dist, 0.0)
        tree = linkage(squareform(dist, checks=False), method="average")
        labels[live] = fcluster(tree, t=1.0 - threshold, criterion="distance") - 1
    return labels


@dataclass(frozen=True)
class GroupSummary:
    """Grouping of one layer: width W, live neurons, number of groups, mean group size (live / groups),
    and the fraction of live neurons that have at least one near-copy (in a group of size >= 2)."""

    width: int
    num_live: int
    num_groups: int
    mean_group_size: float
    frac_redundant: float


def summarize_groups(labels) -> GroupSummary:
    """``GroupSummary`` of the labels of ``group_neurons``."""
    labels = np.asarray(labels)
    live = labels[labels >= 0]
    if live.size == 0:
        return GroupSummary(labels.size, 0, 0, float("nan"), float("nan"))
    _, sizes = np.unique(live, return_counts=True)
    return GroupSummary(
        width=int(labels.size), num_live=int(live.size), num_groups=int(sizes.size),
        mean_group_size=float(live.size / sizes.size),
        frac_redundant=float(sizes[sizes >= 2].sum() / live.size),
    )


# --------------------------------------------------------------------------- MLP training


def mlp_widths(d_in: int, hidden: int, last_hidden: int, num_classes: int):
    """(d_in, hidden, last_hidden, num_classes): the two-hidden-layer MLP whose last hidden layer is studied."""
    return (int(d_in), int(hidden), int(last_hidden), int(num_classes))


def mlp_spec(widths) -> MLPSpec:
    """The network of this module: ``MLPSpec(widths)``, ReLU, standard parameterization, He init (sigma_w^2 = 2)."""
    return MLPSpec(tuple(int(w) for w in widths), "relu", "standard", sigma_w=float(np.sqrt(2.0)))


def last_hidden_activity(widths, params, x):
    """Activities of the last hidden layer (N, widths[-2]) of ``mlp_spec(widths)`` with ``params``."""
    acts, _ = mlp_spec(widths).trace(params, x)
    return acts[-1]


def train_mlp_weight_decay(key, widths, data, lams, optimizer, num_steps: int, record_every: int = 100):
    """Train ``mlp_spec(widths)`` (standard parameterization, ReLU, He init) on ``data`` once per weight decay.

    Loss: softmax cross-entropy + lam * sum of squared parameters, full batch, with the optax
    ``optimizer``; one init (from ``key``) shared by all lams, vmapped over lams (one compile).
    Records the training accuracy every ``record_every`` steps. Returns (apply_fn, TrainResult)
    with a leading axis len(lams) on the result; ``records`` is the accuracy (len(lams), R).
    """
    lams = jnp.asarray(lams, dtype=jnp.float32)
    if lams.ndim != 1 or bool(jnp.any(lams < 0)):
        raise ValueError(f"lams must be a 1-D array of weight decays >= 0, got {lams}")
    widths = tuple(int(w) for w in widths)
    apply_fn = mlp_spec(widths)
    params0 = apply_fn.init(key)
    x, y = data.x_train, data.y_train

    def train_accuracy(params):
        return training.accuracy(apply_fn(params, x), y)

    def run(lam):
        def loss(params):
            penalty = sum(jnp.sum(p**2) for p in jax.tree.leaves(params))
            return training.softmax_cross_entropy(apply_fn(params, x), y) + lam * penalty

        return training.train_optax(loss, params0, optimizer, num_steps, record_every, observe=train_accuracy)

    return apply_fn, jax.vmap(run)(lams)
