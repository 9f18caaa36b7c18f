"""Bayesian low-rank (TT) network with rank-shrinking priors, mean-field VI, and calibration metrics.

Model (after Hawkins & Zhang 2021): the TT-MLP of ``overparam.experiments.tensorized``. Every TT bond k of
every layer has scales tau_k (r_k,); an entry G_k[a, i, j, b] of core k has prior
N(0, s_k^2 tau_{k-1}[a]^2 tau_k[b]^2), with s_k the initialization std and tau = 1 at the
boundary bonds, so driving tau_k[b] -> 0 switches off rank slice b of bond k in both cores
it touches. The scales have a half-Cauchy(0, 1) hyperprior (sparsity inducing: a pole-free
density with heavy tails, whose MAP pushes unused scales to 0). Biases have prior N(0, 1).

Posterior approximation: mean-field Gaussian q(w) = N(mu, sigma^2) on all weights and biases,
type-II MAP point estimates of log tau, trained by Adam (cosine-decayed step size) on the
negative ELBO per example

    L = mean_n -log p(y_n | x_n, w~q) (one reparameterized sample per step)
        + lam * [KL(q || p(.|tau)) - log p_halfCauchy(tau)] / N.

lam = 1 is the ELBO of the Bayesian model. lam < 1 is the *tempered* posterior
p(D|w)^(1/lam) p(w|tau) p(tau) (likelihood tempering, Wenzel et al. 2020; the "KL weight" of
Zhang et al. 2018): mean-field VI with the full KL is known to be under-confident on small
data, and lam is chosen on held-out data, never on the test set.

Cost: two parameters per weight (mu, log sigma), one forward pass per step, S forward
passes at prediction time (``predictive_probs``).
"""

from __future__ import annotations

import itertools
import math
from functools import partial

import jax
import jax.numpy as jnp
import optax

from overparam.experiments.tensorized import tt_mlp_apply
from overparam.training import run_loop


def init_variational(params, init_log_sigma: float = -6.0):
    """q from a TT-MLP ``params`` (means), log sigma = init_log_sigma, log tau = 0 per bond."""
    mu = params
    log_sigma = jax.tree.map(lambda a: jnp.full_like(a, init_log_sigma), params)
    base_std = [[float(jnp.std(c)) for c in layer["cores"]] for layer in params]
    log_tau = [[jnp.zeros(c.shape[3]) for c in layer["cores"][:-1]] for layer in params]
    return {"mu": mu, "log_sigma": log_sigma, "log_tau": log_tau}, base_std


def prior_std(q, base_std):
    """Prior std pytree (same structure as q['mu']) from the rank scales tau and base stds s_k."""
    out = []
    for layer, taus, stds in zip(q["mu"], q["log_tau"], base_std):
        d = len(layer["cores"])
        full = [jnp.ones(1)] + [jnp.exp(t) for t in taus] + [jnp.ones(1)]
        cores = [stds[k] * full[k][:, None, None, None] * full[k + 1][None, None, None, :] * jnp.ones_like(layer["cores"][k])
                 for k in range(d)]
        out.append({"cores": cores, "b": jnp.ones_like(layer["b"])})
    return out


def gaussian_kl(mu, log_sigma, prior_sd):
    """sum KL(N(mu, sigma^2) || N(0, prior_sd^2)) over all entries of the pytrees."""
    def kl(m, ls, ps):
        return jnp.sum(jnp.log(ps) - ls + (jnp.exp(2 * ls) + m**2) / (2 * ps**2) - 0.5)
    return sum(jax.tree.leaves(jax.tree.map(kl, mu, log_sigma, prior_sd)))


def half_cauchy_logpdf(tau, scale: float = 1.0):
    """log density of the half-Cauchy(0, scale) at tau > 0."""
    return jnp.log(2.0 / (math.pi * scale)) - jnp.log1p((tau / scale) ** 2)


def sample_params(key, q):
    """One reparameterized draw w = mu + sigma * eps from q.

    One normal vector for all leaves, cut into pieces: a random draw per leaf would compile one
    threefry kernel per shape, which dominates the compile time of the fits on CPU.
    """
    leaves, treedef = jax.tree.flatten(q["mu"])
    sizes = [a.size for a in leaves]
    eps = jnp.split(jax.random.normal(key, (sum(sizes),)), list(itertools.accumulate(sizes))[:-1])
    eps = jax.tree.unflatten(treedef, [e.reshape(a.shape) for e, a in zip(eps, leaves)])
    return jax.tree.map(lambda m, ls, e: m + jnp.exp(ls) * e, q["mu"], q["log_sigma"], eps)


def negative_elbo(q, key, x, y, base_std, kl_weight=1.0):
    """Negative (tempered) ELBO per training example, see the module docstring; x (N, M), one-hot y (N, C).

    kl_weight = lam multiplies KL(q || prior) and the hyperprior term (1 = the untempered ELBO).
    """
    w = sample_params(key, q)
    nll = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(tt_mlp_apply(w, x)), axis=-1))
    kl = gaussian_kl(q["mu"], q["log_sigma"], prior_std(q, base_std))
    hyper = sum(jnp.sum(half_cauchy_logpdf(jnp.exp(t))) for t in jax.tree.leaves(q["log_tau"]))
    return nll + kl_weight * (kl - hyper) / x.shape[0]


def _step_key(data, t):
    """``batches(data, t)`` for ``run_loop``: step t draws its sample with keys[t]; x, y, base_std, kl_weight stay."""
    keys, *rest = data
    return (keys[t], *rest)


@partial(jax.jit, static_argnames=("lr", "num_steps"))
def _fit(q0, key, x, y, base_std, kl_weight, lr, num_steps):
    # module level with kl_weight traced: one compilation serves every temperature of a sweep
    opt = optax.adam(optax.cosine_decay_schedule(lr, num_steps, alpha=0.01))
    data = (jax.random.split(key, num_steps), x, y, base_std, kl_weight)
    result = run_loop(negative_elbo, q0, opt, num_steps, data=data, batches=_step_key, record_every=num_steps,
                      divergence_threshold=None)
    return result.params, result.step_losses


def fit_variational(key, q0, base_std, x, y, lr: float, num_steps: int, kl_weight: float = 1.0):
    """Adam on ``negative_elbo`` for num_steps full-batch steps -> (q, losses (num_steps,)).

    q0 from ``variational_init``; x (N, M), one-hot y (N, C). Step t draws its reparameterized
    sample with the t-th key of ``jax.random.split(key, num_steps)``; losses[t] is the negative
    ELBO of that sample at q before update t. ``overparam.training.run_loop`` (one jitted scan, no
    divergence check). The step size decays from lr to lr / 100 on a cosine schedule, so the last
    steps average out the single-sample gradient noise. kl_weight in (0, 1]: the posterior
    temperature lam.
    """
    if int(num_steps) < 1:
        raise ValueError(f"num_steps={num_steps}: expected an integer >= 1")
    if not 0.0 < float(kl_weight) <= 1.0:
        raise ValueError(f"kl_weight={kl_weight}: expected a temperature in (0, 1]")
    base = jax.tree.map(jnp.asarray, base_std)
    return _fit(q0, key, x, y, base, jnp.asarray(kl_weight, jnp.float32), float(lr), int(num_steps))


@partial(jax.jit, static_argnames="num_samples")
def predictive_probs(key, q, x, num_samples: int):
    """Bayesian model average: mean over num_samples draws of softmax(logits) -> (B, C). Jitted per shape."""
    # lax.map, not vmap: vmapping turns every core into a batched operand of the einsums, which
    # XLA on CPU compiles very slowly (tens of seconds); a loop over samples compiles one forward pass
    keys = jax.random.split(key, num_samples)
    return jnp.mean(jax.lax.map(lambda k: jax.nn.softmax(tt_mlp_apply(sample_params(k, q), x)), keys), axis=0)


def rank_scales(q):
    """Per layer, per bond: tau_k (r_k,) as a list of lists of arrays."""
    return [[jnp.exp(t) for t in taus] for taus in q["log_tau"]]


def effective_ranks(q, threshold: float = 0.1):
    """Per layer, per bond: number of slices with tau_k[b] > threshold * max_b tau_k[b]."""
    return [[int(jnp.sum(t > threshold * jnp.max(t))) for t in taus] for taus in rank_scales(q)]


def prune_rank_slices(q, threshold: float = 0.1):
    """q with the rank slices that ``effective_ranks`` does not count removed (a smaller TT-MLP posterior).

    Slice b of bond k is row block G_k[..., b] of core k and G_{k+1}[b, ...] of core k+1; both
    are deleted from mu and log_sigma, and tau_k[b] from log_tau. The result works with every
    function of this module and ``tt_mlp_counts(q['mu'])`` counts the pruned network.
    """
    if not 0.0 <= float(threshold) < 1.0:
        raise ValueError(f"threshold={threshold}: expected a fraction of the largest scale in [0, 1)")
    mu, log_sigma, log_tau = [], [], []
    for layer_mu, layer_ls, taus in zip(q["mu"], q["log_sigma"], q["log_tau"]):
        keeps = [jnp.exp(t) > threshold * jnp.max(jnp.exp(t)) for t in taus]
        mu.append({"cores": _slice_cores(layer_mu["cores"], keeps), "b": layer_mu["b"]})
        log_sigma.append({"cores": _slice_cores(layer_ls["cores"], keeps), "b": layer_ls["b"]})
        log_tau.append([t[k] for t, k in zip(taus, keeps)])
    return {"mu": mu, "log_sigma": log_sigma, "log_tau": log_tau}


def _slice_cores(cores, keeps):
    out = list(cores)
    for k, keep in enumerate(keeps):
        out[k] = out[k][..., keep]
        out[k + 1] = out[k + 1][keep]
    return out


def predictive_nll(probs, labels):
    """Mean negative log predictive probability of the true labels (N,) under probs (N, C)."""
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs {probs.shape}, labels {labels.shape}: expected (N, C) and (N,)")
    return -jnp.mean(jnp.log(jnp.maximum(probs[jnp.arange(labels.shape[0]), labels], 1e-30)))


def reliability_bins(probs, labels, num_bins: int = 10):
    """Equal-width confidence bins on [0, 1]: (confidence, accuracy, count), each (num_bins,).

    probs (N, C) predictive probabilities, labels (N,) integers; confidence = max_c probs.
    Empty bins have confidence = accuracy = 0 and count 0.
    """
    if probs.ndim != 2 or labels.shape != probs.shape[:1]:
        raise ValueError(f"probs {probs.shape}, labels {labels.shape}: expected (N, C) and (N,)")
    conf = jnp.max(probs, axis=1)
    correct = (jnp.argmax(probs, axis=1) == labels).astype(probs.dtype)
    idx = jnp.clip((conf * num_bins).astype(int), 0, num_bins - 1)
    count = jnp.zeros(num_bins).at[idx].add(1.0)
    safe = jnp.maximum(count, 1.0)
    return jnp.zeros(num_bins).at[idx].add(conf) / safe, jnp.zeros(num_bins).at[idx].add(correct) / safe, count


def expected_calibration_error(probs, labels, num_bins: int = 10):
    """ECE = sum_bins (count / N) |accuracy - confidence| (Guo et al. 2017), equal-width bins."""
    conf, acc, count = reliability_bins(probs, labels, num_bins)
    return jnp.sum(count / probs.shape[0] * jnp.abs(acc - conf))


def predictive_entropy(probs):
    """Entropy -sum_c p log p of each row of probs (N, C), in nats -> (N,)."""
    return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0), axis=1)


def rotate_images(x, side: int = 8):
    """Rotate flattened square images x (N, side*side) by 90 degrees (the chapter's OOD inputs)."""
    return jnp.rot90(x.reshape(-1, side, side), axes=(1, 2)).reshape(x.shape[0], -1)


def bootstrap_ece_difference(key, probs_a, probs_b, labels, num_boot: int = 200, num_bins: int = 10):
    """ECE(a) - ECE(b) on the test set and its bootstrap standard error -> (difference, se).

    probs_a, probs_b (N, C) two models' predictive probabilities on the same N inputs, labels (N,).
    Paired bootstrap: each of num_boot resamples draws N inputs with replacement and recomputes
    both ECEs on them, so the SE is the test-set sampling noise of the difference.
    """
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"probs_a {probs_a.shape} and probs_b {probs_b.shape}: expected the same (N, C)")
    n = labels.shape[0]
    idx = jax.random.randint(key, (int(num_boot), n), 0, n)
    diffs = jax.lax.map(lambda i: expected_calibration_error(probs_a[i], labels[i], num_bins)
                        - expected_calibration_error(probs_b[i], labels[i], num_bins), idx)
    return (expected_calibration_error(probs_a, labels, num_bins) - expected_calibration_error(probs_b, labels, num_bins),
            jnp.std(diffs, ddof=1))
