"""FIQA training losses (docs/methods.md): margin softmax for FR + CR-target SmoothL1 for quality
(ViT-FIQA, CR-FIQA).

Per batch, with e the FR embedding [B, E], q the quality [B], y labels [B] and W class centres
[C, E] (PartialFC with sample rate 1 = a full softmax):
  c     = clip(l2n(e) @ l2n(W).T, -1, 1)                                  [B, C]
  CR    = c[y] / (max_{j != y} c[j] + 1 + 1e-9)     from the pre-margin c, stop-gradient
  L_FR  = CE(s * margin(c), y)        CosFace (m1, m2, m3) = (1, 0, 0.4), s = 64 by default
  L_FIQ = mean SmoothL1_beta(q, CR)   beta = 0.5
  L     = L_FR + alpha * L_FIQ        alpha = 10 (the official 4-GPU run is ≈ 40 effective)

Everything uses one-hot masks instead of gathers so the class axis can be sharded over a `model`
mesh axis (GSPMD turns the max/logsumexp over classes into cross-device reductions). Classes
beyond `num_classes` (padding so the class axis divides the model axis) are masked out.
The NNCCS is the max over ALL other classes (the CR-FIQA / single-device definition), not the
per-GPU max of the PartialFC code.

CR-FIQA's released training code (fdbtrs/CR-FIQA `train_cr_fiqa.py`, `losses.CR_FIQA_LOSS`)
differs in two details, each one argument here (configs/train_crfiqa.py sets both):
  cr_denominator="nnccs"   CR = CCS / max(NNCCS, -1e-12), no "+ 1 + 1e-9" (the papers' formula)
  margin_fallback=False    ArcFace cos(theta + m2) for every theta, without insightface's linear
                           fallback past theta + m2 = pi
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from exfiqa_jax.metrics.comparisons import l2_normalize

COSFACE = (1.0, 0.0, 0.4)
CR_DENOMINATORS = ("nnccs_plus_one", "nnccs")   # CCS / (NNCCS + 1 + 1e-9) | CCS / NNCCS
_NEG = -1e30  # finite "minus infinity" (keeps 0 * _NEG = 0 in one-hot sums)


def cosine_logits(embedding: jax.Array, centres: jax.Array) -> jax.Array:
  """Clamped cosine between embeddings [B, E] and class centres [C, E] -> [B, C], float32."""
  e = l2_normalize(embedding.astype(jnp.float32))
  w = l2_normalize(centres.astype(jnp.float32))
  cos = jnp.einsum("be,ce->bc", e, w, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(cos, -1.0, 1.0)


def class_mask(num_padded: int, num_classes: int | None) -> jax.Array | None:
  """[C_pad] bool, True for real classes; None when nothing is padded."""
  if num_classes is None or num_classes == num_padded:
    return None
  return jnp.arange(num_padded) < num_classes


def margin_logits(cos: jax.Array, labels: jax.Array, scale: float,
                  margins: Sequence[float] = COSFACE, valid: jax.Array | None = None,
                  fallback: bool = True) -> jax.Array:
  """insightface CombinedMarginLoss: target cosine -> cos(m1*theta + m2) - m3, all times s.

  (1, 0, m3) is CosFace (c_y - m3), (1, m2, 0) ArcFace with insightface's fallback
  c_y - sin(pi - m2) * m2 where theta + m2 would pass pi (`fallback=False`: cos(theta + m2)
  there too, as CR-FIQA's CR_FIQA_LOSS). Returns [B, C] logits; padded classes get a very
  negative logit.
  """
  m1, m2, m3 = (float(m) for m in margins)
  onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=cos.dtype)
  target = jnp.sum(cos * onehot, axis=-1)                      # [B]
  if m1 == 1.0 and m2 == 0.0:
    final = target - m3                                        # CosFace (or plain softmax)
  else:
    theta = jnp.arccos(jnp.clip(target, -1.0 + 1e-7, 1.0 - 1e-7))
    with_margin = jnp.cos(m1 * theta + m2) - m3
    limit = math.cos(math.pi - m2)                             # theta + m2 <= pi  <=>  c >= limit
    final = (jnp.where(target > limit, with_margin, target - math.sin(math.pi - m2) * m2 - m3)
             if fallback else with_margin)
  logits = cos + onehot * (final - target)[:, None]
  logits = scale * logits
  if valid is not None:
    logits = jnp.where(valid[None, :], logits, _NEG)
  return logits


def cr_target(cos: jax.Array, labels: jax.Array, valid: jax.Array | None = None,
              denominator: str = "nnccs_plus_one") -> jax.Array:
  """Certainty ratio from pre-margin cosines [B, C] -> [B], no gradient: CCS / (NNCCS + 1 +
  1e-9) (the papers, ViT-FIQA), or with denominator="nnccs" CCS / max(NNCCS, -1e-12) as CR-FIQA's
  training code computes it (its own class is set to -1e-12 before the max)."""
  if denominator not in CR_DENOMINATORS:
    raise ValueError(f"--config.loss.cr_denominator must be one of {CR_DENOMINATORS}, got "
                     f"{denominator!r}")
  cos = jax.lax.stop_gradient(cos)
  onehot = jax.nn.one_hot(labels, cos.shape[-1], dtype=bool)
  ccs = jnp.sum(jnp.where(onehot, cos, 0.0), axis=-1)
  others = ~onehot if valid is None else (~onehot) & valid[None, :]
  nnccs = jnp.max(jnp.where(others, cos, -2.0), axis=-1)
  if denominator == "nnccs":
    return ccs / jnp.maximum(nnccs, -1e-12)
  return ccs / (nnccs + 1.0 + 1e-9)


def smooth_l1(pred: jax.Array, target: jax.Array, beta: float = 0.5) -> jax.Array:
  """torch.nn.SmoothL1Loss(reduction='none', beta): 0.5 d²/beta if |d| < beta else |d| - beta/2."""
  d = jnp.abs(pred - target)
  return jnp.where(d < beta, 0.5 * jnp.square(d) / beta, d - 0.5 * beta)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-sample -log softmax(logits)[y] -> [B] (one-hot form: class axis may be sharded)."""
  onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
  return jax.nn.logsumexp(logits, axis=-1) - jnp.sum(logits * onehot, axis=-1)


def fiqa_loss(embedding: jax.Array, quality: jax.Array, centres: jax.Array, labels: jax.Array, *,
              scale: float = 64.0, margins: Sequence[float] = COSFACE, alpha: float = 10.0,
              beta: float = 0.5, num_classes: int | None = None,
              cr_denominator: str = "nnccs_plus_one", margin_fallback: bool = True
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L = L_FR + alpha * L_FIQ for one (global) batch; returns (loss, metrics of scalars).

  embedding [B, E], quality [B] (or [B, 1]), centres [C_pad, E], labels int [B].
  cr_denominator / margin_fallback: the module docstring (CR-FIQA's training code).
  """
  quality = quality.reshape(quality.shape[0]).astype(jnp.float32)
  valid = class_mask(centres.shape[0], num_classes)
  cos = cosine_logits(embedding, centres)
  cr = cr_target(cos, labels, valid, cr_denominator)
  logits = margin_logits(cos, labels, scale, margins, valid, margin_fallback)
  loss_fr = jnp.mean(softmax_cross_entropy(logits, labels))
  loss_fiq = jnp.mean(smooth_l1(quality, cr, beta))
  loss = loss_fr + alpha * loss_fiq
  masked_cos = cos if valid is None else jnp.where(valid[None, :], cos, -2.0)
  accuracy = jnp.mean((jnp.argmax(masked_cos, axis=-1) == labels).astype(jnp.float32))
  metrics = {"loss": loss, "loss_fr": loss_fr, "loss_fiq": loss_fiq, "train_accuracy": accuracy,
             "cr_mean": jnp.mean(cr), "quality_mean": jnp.mean(quality)}
  return loss, metrics
