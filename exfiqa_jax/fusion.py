"""Fusion of the per-exit quality scores (docs/methods.md), vmapped over strategies.

  EX-FIQA-F   w_l = 1/L (mean of all exits)          fuse_f(exit_scores)
  EX-FIQA-FW  w_l = l / Σ_k k (deeper exits count more)  fuse_fw(exit_scores)
  others      any weights over any subset of exits (1-based exit numbers), optionally after a
              per-exit normalisation fitted on a calibration set (z-score, min-max, rank).
The papers fuse raw head outputs (no normalisation): that is the default. Pure numerics: the
fitting (normalisers, learned weights) is exfiqa_jax/calibrate/fusion_fit.py.
"""
from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


# ------------------------------------------------------------------------------------------
# Per-exit normalisation (fitted on a calibration set: calibrate/fusion_fit.fit_normalizer)
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
