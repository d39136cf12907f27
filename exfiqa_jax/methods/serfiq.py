"""SER-FIQ, same-model type (pterhoer/FaceImageQuality): robustness of stochastic embeddings.

On an iResNet / IR FR model (docs/methods.md). T passes with dropout active where the network
has its dropout — after flatten(final BN), before `fc` — each embedding L2-normalised; d = the
mean Euclidean distance over the T(T−1)/2 pairs; quality s = 2 / (1 + exp(d)), higher = better.
`rescale=True` gives the official `get_score` value 1 / (1 + exp(−α(s − r))) (α = 130, r = 0.88),
a monotone map of s (same EDC). Official defaults: T = 100, rate 0.5 (inverted dropout).

Only the layers after the dropout are stochastic, so the trunk runs once per image and the T
tails (fc → `features` BN, models/iresnet.head_after_dropout) run batched over the passes
(`lax.map` with `batch_size=chunk`: vmap over `chunk` PRNG keys at a time). Each image draws its
own masks from `seed` and a fingerprint of its pixels, so a score does not depend on the batch
the image came in, and reruns are bit-identical. Memory: masks exist for `chunk` passes at a
time ([chunk, B, C·H·W]); the T normalised embeddings [T, B, E] are kept (200 KB per image at
T = 100, E = 512) because a mean of pairwise distances needs every pair at once.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax import columns
from exfiqa_jax.methods import registry
from exfiqa_jax.methods import scorer as scorer_lib
from exfiqa_jax.models import iresnet

METHOD = registry.SERFIQ
COLUMNS = (columns.SERFIQ,)
_GOLDEN = np.uint32(0x9E3779B1)   # odd multiplier of the pixel fingerprint


def trunk_features(module: iresnet.IResNet, variables: Any, images: jax.Array) -> jax.Array:
  """What the model's dropout receives [B, C·H·W]: flatten(final BN(trunk(images)))."""
  _, state = module.apply(variables, images, mutable=["intermediates"],
                          capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout))
  (features,) = jax.tree.leaves(state["intermediates"])
  return features.astype(jnp.float32)


def image_seeds(images: jax.Array) -> jax.Array:
  """A 32-bit fingerprint of each normalised image [B, ...] → uint32 [B] (position-weighted sum
  of the float32 bit patterns, wrapping)."""
  bits = jax.lax.bitcast_convert_type(images.astype(jnp.float32), jnp.uint32)
  bits = bits.reshape(images.shape[0], -1)
  weights = (2 * jnp.arange(bits.shape[1], dtype=jnp.uint32) + 1) * _GOLDEN
  return jnp.sum(bits * weights, axis=1, dtype=jnp.uint32)


def dropout_mask(seed: int, seeds: jax.Array, index: jax.Array, num_features: int,
                 rate: float) -> jax.Array:
  """Keep-mask [B, F] of pass `index`: key = fold_in(fold_in(key(seed), image seed), index)."""
  base = jax.random.key(seed)

  def one(image_seed):
    key = jax.random.fold_in(jax.random.fold_in(base, image_seed), index)
    return jax.random.bernoulli(key, 1.0 - rate, (num_features,))

  return jax.vmap(one)(seeds)


def dropout_masks(seed: int, seeds: jax.Array, passes: int, num_features: int,
                  rate: float) -> jax.Array:
  """All T masks [T, B, F] at once (tests feed them to the official loop's twin)."""
  return jax.vmap(lambda t: dropout_mask(seed, seeds, t, num_features, rate))(
      jnp.arange(passes))


def tail_embeddings(config: iresnet.IResNetConfig, variables: Any, features: jax.Array,
                    mask: jax.Array, rate: float) -> jax.Array:
  """One stochastic pass of the tail: inverted dropout → fc → features BN → L2 [B, E]."""
  x = features * mask.astype(jnp.float32) / (1.0 - rate)
  embedding = iresnet.head_after_dropout(config, variables, x)
  return embedding / jnp.linalg.norm(embedding, axis=-1, keepdims=True)


def robustness(embeddings: jax.Array) -> jax.Array:
  """s = 2 / (1 + exp(mean pairwise distance)) of normalised embeddings [T, B, E] → [B]; the
  distances from the Gram matrix, ‖a − b‖² = ‖a‖² + ‖b‖² − 2⟨a, b⟩ (as sklearn computes them)."""
  t = embeddings.shape[0]
  gram = jnp.einsum("tbe,ube->btu", embeddings, embeddings,
                    precision=jax.lax.Precision.HIGHEST)
  sq = jnp.diagonal(gram, axis1=1, axis2=2)
  dist = jnp.sqrt(jnp.maximum(sq[:, :, None] + sq[:, None, :] - 2.0 * gram, 0.0))
  upper = jnp.asarray(np.triu(np.ones((t, t), np.float32), k=1))
  mean = jnp.sum(dist * upper, axis=(1, 2)) / (t * (t - 1) / 2)
  return 2.0 * (1.0 / (1.0 + jnp.exp(mean)))


def rescaled(s: jax.Array, alpha: float = 130.0, r: float = 0.88) -> jax.Array:
  """The official `get_score` value: 1 / (1 + exp(−α(s − r)))."""
  return 1.0 / (1.0 + jnp.exp(-(alpha * (s - r))))


def scorer(module: Any, variables: Any, model_config: Mapping[str, Any], *, passes: int = 100,
           rate: float = 0.5, seed: int = 0, rescale: bool = False, alpha: float = 130.0,
           r: float = 0.88, chunk: int = 10) -> scorer_lib.Scorer:
  """images [B, S, S, 3] (uint8 RGB, or float32 normalised the family's way) → {serfiq} [B].

  `passes` = T, `rate` = the dropout rate, `seed` = the masks' seed, `rescale` = the official
  α/r rescaling, `chunk` = passes computed together (memory [chunk, B, C·H·W])."""
  module, variables = scorer_lib.unfolded_iresnet(METHOD, module, variables, model_config)
  if passes < 2 or not 0.0 < rate < 1.0 or chunk < 1:
    raise ValueError(f"SER-FIQ needs passes >= 2, 0 < rate < 1 and chunk >= 1; got passes="
                     f"{passes}, rate={rate}, chunk={chunk}")
  cfg, input_scale = module.config, model_config.get("input_scale", "minus1_1")

  def forward(variables, images):
    images = scorer_lib.prepare_images(images, input_scale)
    features = trunk_features(module, variables, images)
    seeds = image_seeds(images)

    def one_pass(index):
      mask = dropout_mask(seed, seeds, index, features.shape[1], rate)
      return tail_embeddings(cfg, variables, features, mask, rate)

    embeddings = jax.lax.map(one_pass, jnp.arange(passes), batch_size=min(chunk, passes))
    s = robustness(embeddings)
    return {columns.SERFIQ: rescaled(s, alpha, r) if rescale else s}

  return scorer_lib.bind(METHOD, COLUMNS, forward, variables)
