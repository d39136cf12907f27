"""GraFIQs (jankolf/GraFIQs): gradient magnitudes of a BatchNorm-statistics loss (docs/methods.md).

On any iResNet / IR FR model with its BatchNorms unfolded (their running statistics are the
reference). Per image, alone (a batch of one, as the official script runs): every BatchNorm2d
(stem, each unit's, each downsample's, the final one; not the `features` BatchNorm1d) sees an
input whose per-channel mean over H×W and biased variance are compared with its running mean and
variance; the BNS loss is the mean over those layers of MSE(mean) + MSE(variance), the network
in eval mode. Its gradient w.r.t. the normalised input image and the outputs of the four stages
gives five columns: grafiqs_image, grafiqs_block1 … grafiqs_block4 = −Σ|∂loss/∂·|.

Direction: the official score Σ|grad| is *lower* for better images (the maintainer's answers in
jankolf/GraFIQs issues #1 and #4 read low raw values as good quality); the columns are negated so
that higher = better, like every toolkit column. Cost: one forward and one backward pass per
image. The whole batch is one compiled program: `vmap(grad(per-image loss))`; the BN inputs are
read and the stage outputs perturbed by a Flax method interceptor (the counterpart of the
official forward hooks), so the network's own code runs unchanged.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from exfiqa_jax import columns
from exfiqa_jax.methods import registry
from exfiqa_jax.methods import scorer as scorer_lib
from exfiqa_jax.models import iresnet

METHOD = registry.GRAFIQS
COLUMNS = columns.GRAFIQS


def bns_loss_and_grads(module: iresnet.IResNet, variables: Any, image: jax.Array
                       ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
  """(loss, ∂loss/∂image [H, W, 3], (∂loss/∂stage_k output [h, w, c] for k = 1..4)) of one
  normalised image [H, W, 3]; vmap it for a batch."""
  cfg = module.config
  paths = iresnet.stage_output_paths(cfg)
  zeros = tuple(jnp.zeros((1,) + s, jnp.float32) for s in iresnet.stage_output_shapes(cfg))

  def loss_fn(image, deltas):
    terms = []

    def intercept(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      mdl = context.module
      if context.method_name != "__call__":
        return out
      if isinstance(mdl, nn.BatchNorm) and args[0].ndim == 4:        # a BatchNorm2d
        x = args[0].astype(jnp.float32)
        mean = jnp.mean(x, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))     # biased, as bn.py asks
        terms.append(jnp.mean(jnp.square(mean - mdl.get_variable("batch_stats", "mean")))
                     + jnp.mean(jnp.square(var - mdl.get_variable("batch_stats", "var"))))
      if mdl.path in paths:                     # grad w.r.t. a zero shift = grad w.r.t. output
        out = out + deltas[paths.index(mdl.path)].astype(out.dtype)
      return out

    with nn.intercept_methods(intercept):
      module.apply(variables, image[None])
    return sum(terms) / len(terms)

  loss, (g_image, g_blocks) = jax.value_and_grad(loss_fn, argnums=(0, 1))(image, zeros)
  return loss, g_image, tuple(g[0] for g in g_blocks)


def scorer(module: Any, variables: Any, model_config: Mapping[str, Any]) -> scorer_lib.Scorer:
  """images [B, S, S, 3] (uint8 RGB, or float32 normalised the family's way) → the five GraFIQs
  columns [B], higher = better (−Σ|grad|)."""
  module, variables = scorer_lib.unfolded_iresnet(METHOD, module, variables, model_config)
  input_scale = model_config.get("input_scale", "minus1_1")

  def per_image(variables, image):
    _, g_image, g_blocks = bns_loss_and_grads(module, variables, image)
    return [-jnp.sum(jnp.abs(g)) for g in (g_image,) + g_blocks]

  def forward(variables, images):
    images = scorer_lib.prepare_images(images, input_scale)
    sums = jax.vmap(per_image, in_axes=(None, 0))(variables, images)
    return dict(zip(COLUMNS, sums))

  return scorer_lib.bind(METHOD, COLUMNS, forward, variables)
