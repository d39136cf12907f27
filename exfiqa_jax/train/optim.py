"""Optimisers of the official runs (docs/methods.md): clip backbone grads at 5, then AdamW with
warm-up/decay (ViT-FIQA, `make_optimizer`) or SGD with momentum and step decay (CR-FIQA,
`make_sgd`).

Parameters are one tree `{"backbone": <ViT params>, "centres": [C, E]}`.
- Gradient clipping like `torch.nn.utils.clip_grad_norm_(backbone.parameters(), 5)`: the global
  norm is over the backbone only and only the backbone is scaled (factor max_norm/(norm + 1e-6),
  capped at 1); class-centre gradients pass unclipped.
- AdamW as torch (betas 0.9/0.999, eps 1e-8, decoupled decay p -= lr*wd*p) with weight decay 0.05
  on ALL parameters, class centres included (the official `no_weight_decay()` is unused).
- `polynomial_warmup` is insightface's PolynomialLRWarmup stepped once per iteration, including its
  quirk: the first update (optax count 0) runs at the full lr0, then lr0*s/w for 1 <= s <= w, then
  lr0*(1 - (s-w)/(t-w))**power, and 0 from s = t on.
- SGD as torch.optim.SGD(momentum=0.9, weight_decay=5e-4) on every parameter: the decay is added
  to the (clipped) gradient, buf = momentum·buf + g (buf = g at the first update), p -= lr·buf;
  the rate steps down by 10 at epoch milestones (CR-FIQA's LambdaLR, stepped once per epoch).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


def polynomial_warmup(lr: float, warmup_steps: int, total_steps: int,
                      power: float = 1.0) -> optax.Schedule:
  """lr for the update with 0-based index `count` (see the module docstring for the quirk)."""
  if total_steps <= warmup_steps:
    raise ValueError(f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps}); "
                     "lower the warm-up or train for more steps.")

  def schedule(count):
    s = jnp.asarray(count, jnp.float32)
    warm = lr * s / max(warmup_steps, 1)
    frac = (jnp.minimum(s, total_steps) - warmup_steps) / (total_steps - warmup_steps)
    decay = lr * jnp.maximum(1.0 - frac, 0.0) ** power
    out = jnp.where(s <= warmup_steps, warm, decay)
    return jnp.where(s == 0, lr, out)

  return schedule


class _ClipState(NamedTuple):
  pass


def clip_by_global_norm_torch(max_norm: float) -> optax.GradientTransformation:
  """torch clip_grad_norm_: g *= min(1, max_norm / (||g||_2 + 1e-6)), norm over the whole tree."""

  def init(params):
    del params
    return _ClipState()

  def update(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    factor = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: (g * factor).astype(g.dtype), updates), state

  return optax.GradientTransformation(init, update)


def backbone_mask(params: dict[str, Any]) -> dict[str, Any]:
  """True on every backbone leaf, False on the class centres."""
  return {k: jax.tree.map(lambda _: k == "backbone", v) for k, v in params.items()}


def make_optimizer(lr: float, warmup_steps: int, total_steps: int, *, weight_decay: float = 0.05,
                   clip_norm: float | None = 5.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8, power: float = 1.0
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(clip backbone -> AdamW(schedule)), and the schedule itself for logging."""
  schedule = polynomial_warmup(lr, warmup_steps, total_steps, power)
  parts = []
  if clip_norm:
    parts.append(optax.masked(clip_by_global_norm_torch(clip_norm), backbone_mask))
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts), schedule


def step_decay(lr: float, boundaries: tuple[int, ...], factor: float = 0.1) -> optax.Schedule:
  """lr · factor^k for the update with 0-based index `count`, k = #{b in boundaries: count >= b}:
  a LambdaLR stepped after every epoch, with boundaries = (milestone epoch − 1) × steps/epoch."""
  values = jnp.asarray([lr * factor ** k for k in range(len(boundaries) + 1)], jnp.float32)
  edges = jnp.asarray(sorted(boundaries), jnp.int32)

  def schedule(count):
    return values[jnp.sum(jnp.asarray(count, jnp.int32) >= edges)]

  return schedule


def make_sgd(lr: float, boundaries: tuple[int, ...], *, momentum: float = 0.9,
             weight_decay: float = 5e-4, clip_norm: float | None = 5.0, factor: float = 0.1
             ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(clip backbone -> + weight_decay·p -> momentum SGD(step_decay)), and the schedule."""
  schedule = step_decay(lr, boundaries, factor)
  parts = []
  if clip_norm:
    parts.append(optax.masked(clip_by_global_norm_torch(clip_norm), backbone_mask))
  parts += [optax.add_decayed_weights(weight_decay),
            optax.sgd(schedule, momentum=momentum or None)]
  return optax.chain(*parts), schedule
