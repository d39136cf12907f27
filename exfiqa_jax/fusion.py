"""Fusion of the per-exit quality scores (docs/methods.md), vmapped over strategies.

  EX-FIQA-F   w_l = 1/L (mean of all exits)          fuse_f(exit_scores)
  EX-FIQA-FW  w_l = l / Σ_k k (deeper exits count more)  fuse_fw(exit_scores)
  others      any weights over any subset of exits (1-based exit numbers), optionally after a
              per-exit normalisation fitted on a calibration set (z-score, min-max, rank).
The papers fuse raw head outputs (no normalisation): that is the default.

Learned weights: `fit_fusion_weights` minimises a differentiable surrogate of the pAUC-EDC
(sigmoid-relaxed discard) with optax; weights = softmax(θ) (non-negative, summing to one). Learned
weights must only be REPORTED on data they were not fitted on: split with
exfiqa_jax.calibrate.splits (by subject/template id, so no identity is on both sides), fit on the
calibration part, evaluate the EDC on the rest.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

NORMALIZATIONS = ("none", "zscore", "minmax", "rank")


# ------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------
def mean_weights(num_exits: int, exits: Sequence[int] | None = None) -> np.ndarray:
  """EX-FIQA-F over all exits (or the given 1-based exits): [L]."""
  mask = _exit_mask(num_exits, exits)
  return mask / mask.sum()


def depth_weights(num_exits: int, exits: Sequence[int] | None = None) -> np.ndarray:
  """EX-FIQA-FW: w_l ∝ l (1-based depth) over all (or the given) exits: [L]."""
  w = np.arange(1, num_exits + 1, dtype=np.float64) * _exit_mask(num_exits, exits)
  return w / w.sum()


def _exit_mask(num_exits: int, exits: Sequence[int] | None) -> np.ndarray:
  if exits is None:
    return np.ones(num_exits)
  exits = np.asarray(list(exits), int)
  if exits.size == 0 or exits.min() < 1 or exits.max() > num_exits:
    raise ValueError(f"exits are 1-based exit numbers in [1, {num_exits}], got {exits.tolist()}")
  mask = np.zeros(num_exits)
  mask[exits - 1] = 1.0
  return mask


def check_weights(weights, num_exits: int) -> np.ndarray:
  w = np.asarray(weights, np.float64)
  if w.shape[-1] != num_exits:
    raise ValueError(f"weights have {w.shape[-1]} entries for {num_exits} exits")
  if not np.all(np.isfinite(w)):
    raise ValueError("fusion weights must be finite")
  return w


# ------------------------------------------------------------------------------------------
# Fusion
# ------------------------------------------------------------------------------------------
def fuse(exit_scores, weights) -> jnp.ndarray:
  """exit_scores [B, L], weights [L] → [B], or weights [K, L] → [K, B] (vmapped over strategies)."""
  x = jnp.asarray(exit_scores, jnp.float32)
  w = jnp.asarray(weights, jnp.float32)
  if w.shape[-1] != x.shape[-1]:
    raise ValueError(f"weights have {w.shape[-1]} entries for {x.shape[-1]} exits")
  one = lambda wk: x @ wk
  return jax.vmap(one)(w) if w.ndim == 2 else one(w)


def fuse_f(exit_scores) -> jnp.ndarray:
  """EX-FIQA-F: mean over all exits. [B, L] → [B]."""
  return jnp.mean(jnp.asarray(exit_scores, jnp.float32), axis=-1)


def fuse_fw(exit_scores) -> jnp.ndarray:
  """EX-FIQA-FW: Σ_l (l / Σ_k k) s_l. [B, L] → [B]."""
  x = jnp.asarray(exit_scores, jnp.float32)
  return fuse(x, depth_weights(x.shape[-1]))


def fuse_strategies(exit_scores, strategies: Mapping[str, np.ndarray],
                    normalizer: "Normalizer | None" = None) -> dict[str, np.ndarray]:
  """{name: weights [L]} → {name: fused [B]}, one vmapped call for all strategies."""
  x = exit_scores if normalizer is None else normalizer(exit_scores)
  names = list(strategies)
  w = np.stack([check_weights(strategies[n], np.shape(x)[-1]) for n in names])
  out = np.asarray(fuse(x, w))
  return {n: out[i] for i, n in enumerate(names)}


def default_strategies(num_exits: int) -> dict[str, np.ndarray]:
  return {"ex_fiqa_f": mean_weights(num_exits), "ex_fiqa_fw": depth_weights(num_exits)}


# ------------------------------------------------------------------------------------------
# Per-exit normalisation (fitted on a calibration set)
# ------------------------------------------------------------------------------------------
class Normalizer(NamedTuple):
  """method and its per-exit parameters; call it on [B, L] scores."""
  method: str
  a: np.ndarray          # zscore: mean; minmax: min; rank: sorted calibration values [N, L]
  b: np.ndarray          # zscore: std; minmax: max - min; rank: unused (N)

  def __call__(self, exit_scores) -> jnp.ndarray:
    x = jnp.asarray(exit_scores, jnp.float32)
    if self.method == "none":
      return x
    if self.method in ("zscore", "minmax"):
      return (x - self.a) / self.b
    # rank: mid-rank empirical CDF of the calibration values, per exit, in [0, 1]
    srt = jnp.asarray(self.a, jnp.float32)
    lo = jax.vmap(lambda col, v: jnp.searchsorted(col, v, side="left"), in_axes=(1, 1),
                  out_axes=1)(srt, x)
    hi = jax.vmap(lambda col, v: jnp.searchsorted(col, v, side="right"), in_axes=(1, 1),
                  out_axes=1)(srt, x)
    return (lo + hi).astype(jnp.float32) / (2.0 * srt.shape[0])


def fit_normalizer(calibration_scores, method: str = "zscore") -> Normalizer:
  """Fit per-exit parameters on calibration exit scores [N, L]."""
  if method not in NORMALIZATIONS:
    raise ValueError(f"method must be one of {NORMALIZATIONS}, got {method!r}")
  c = np.asarray(calibration_scores, np.float64)
  if c.ndim != 2 or c.shape[0] < 2 or not np.all(np.isfinite(c)):
    raise ValueError(f"calibration scores must be finite [N >= 2, L], got shape {c.shape}")
  if method == "none":
    return Normalizer(method, np.zeros(c.shape[1]), np.ones(c.shape[1]))
  if method == "zscore":
    return Normalizer(method, c.mean(0), np.maximum(c.std(0), 1e-12))
  if method == "minmax":
    return Normalizer(method, c.min(0), np.maximum(c.max(0) - c.min(0), 1e-12))
  return Normalizer(method, np.sort(c, axis=0), np.full(c.shape[1], c.shape[0]))


# ------------------------------------------------------------------------------------------
# Learned weights
# ------------------------------------------------------------------------------------------
def surrogate_pauc(weights, image_exit_scores, pairs, scores, is_genuine, fmr: float = 1e-3,
                   limit: float = 0.3, num_levels: int = 7, temperature: float = 0.05):
  """Differentiable pAUC-EDC surrogate of the fused quality (lower is better).

  Fused image quality → pair quality (min) → at each discard level r (0..limit) a soft keep weight
  σ((q - quantile_r(q)) / (T·std q)) over all pairs (pooled, as in the FIQA convention); the
  threshold is fixed at the target FMR over all impostors; FNMR_r = Σ keep·error / Σ keep over
  genuines; trapezoid over r. Hard errors do not depend on the weights; the gradient flows through
  the soft discard.
  """
  q_img = jnp.asarray(image_exit_scores, jnp.float32) @ weights
  pairs = jnp.asarray(pairs)
  q = jnp.minimum(q_img[pairs[:, 0]], q_img[pairs[:, 1]])
  s = jnp.asarray(scores, jnp.float32)
  gen = jnp.asarray(is_genuine, bool)
  imp_sorted = jnp.sort(jnp.where(gen, -jnp.inf, s))[::-1]
  n_imp = jnp.sum(~gen)
  thr = imp_sorted[jnp.floor(fmr * n_imp).astype(jnp.int32)]
  err = (gen & (s <= thr)).astype(jnp.float32)
  scale = jax.lax.stop_gradient(jnp.std(q)) * temperature + 1e-12
  levels = jnp.linspace(0.0, limit, num_levels)

  def fnmr_at(r):
    tau = jnp.quantile(q, r)
    keep = jax.nn.sigmoid((q - tau) / scale) * gen
    return jnp.sum(keep * err) / jnp.maximum(jnp.sum(keep), 1e-6)

  f = jax.vmap(fnmr_at)(levels)
  return jnp.sum((levels[1:] - levels[:-1]) * (f[1:] + f[:-1]) / 2)


class FusionFit(NamedTuple):
  weights: np.ndarray      # [L], non-negative, sum 1
  history: np.ndarray      # [steps] surrogate per step
  initial: float
  final: float


def fit_fusion_weights(image_exit_scores, pairs, scores, is_genuine, *, fmr: float = 1e-3,
                       limit: float = 0.3, steps: int = 200, learning_rate: float = 0.05,
                       temperature: float = 0.05, init: str = "fw",
                       normalizer: Normalizer | None = None) -> FusionFit:
  """Learn fusion weights on CALIBRATION data only (see exfiqa_jax.calibrate.splits).

  image_exit_scores [I, L] (normalise first, or pass `normalizer`), pairs [P, 2] image rows,
  scores [P] comparison scores, is_genuine [P]. Weights = softmax(θ), θ from EX-FIQA-FW ("fw") or
  uniform ("f"); Adam on the surrogate_pauc.
  """
  x = np.asarray(image_exit_scores, np.float32)
  if normalizer is not None:
    x = np.asarray(normalizer(x))
  num_exits = x.shape[-1]
  if init not in ("fw", "f"):
    raise ValueError(f"init must be 'fw' or 'f', got {init!r}")
  w0 = depth_weights(num_exits) if init == "fw" else mean_weights(num_exits)
  theta = jnp.log(jnp.asarray(w0, jnp.float32))
  loss = lambda th: surrogate_pauc(jax.nn.softmax(th), x, pairs, scores, is_genuine, fmr, limit,
                                   temperature=temperature)
  opt = optax.adam(learning_rate)

  @jax.jit
  def run(theta):
    def step(carry, _):
      th, st = carry
      val, g = jax.value_and_grad(loss)(th)
      upd, st = opt.update(g, st, th)
      return (optax.apply_updates(th, upd), st), val
    (th, _), hist = jax.lax.scan(step, (theta, opt.init(theta)), None, length=steps)
    return th, hist, loss(th)

  th, hist, final = run(theta)
  return FusionFit(np.asarray(jax.nn.softmax(th), np.float64), np.asarray(hist),
                   float(hist[0]), float(final))
