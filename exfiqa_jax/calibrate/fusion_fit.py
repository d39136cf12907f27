"""Fitting the fusion of the exit scores (docs/methods.md, "Fusion") on calibration data:
per-exit normalisers and learned weights.

`fit_fusion_weights` minimises a differentiable surrogate of the pAUC-EDC (`surrogate_pauc`,
sigmoid-relaxed discard) with optax; weights = softmax(θ) (non-negative, summing to one).
Learned weights must only be REPORTED on data they were not fitted on: split with
exfiqa_jax.calibrate.splits (by subject/template id, so no identity is on both sides), fit on the
calibration part, evaluate the EDC on the rest (the early_exit job's `ex_fiqa_fit` column).
Applying the fitted weights and normalisers is exfiqa_jax/fusion.py (no optax there).
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from exfiqa_jax.fusion import NORMALIZATIONS, Normalizer, depth_weights, mean_weights


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
