"""FR embeddings for the EDC: jitted, sharded, with the flip (docs/methods.md, docs/evaluation.md).

Conventions (`convention=`):
  "concat"  FIQA evaluation scripts (CR-FIQA extract_emb.py): concat(L2n(f(x)), L2n(f(flip x)))
            → [B, 2E]; the cosine of two such vectors is the mean of the two cosines. Default.
  "sum"     insightface .bin/IJB verification: L2n(f(x) + f(flip x)) → [B, E].
  "none"    no flip: L2n(f(x)) → [B, E].
Input scales (`input_scale=`, recorded per family in model_config.json):
  "minus1_1" (x/255 − 0.5)/0.5 — insightface ArcFace, ElasticFace, CurricularFace, ViTs
  "0_1"      x/255             — MagFace
`embed_images` is the reusable entry (evaluation, the "embed" task in exfiqa_jax/tasks/embed.py);
models are loaded by `exfiqa_jax.inference.load_fr_model`.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from exfiqa_jax import parallel
from exfiqa_jax.data import pipeline, preprocess
from exfiqa_jax.metrics.comparisons import l2_normalize

CONVENTIONS = ("concat", "sum", "none")


def check_convention(convention: str) -> str:
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS} (concat = FIQA papers, sum = "
                     f"insightface verification), got {convention!r}")
  return convention


def combine_flip(embedding: jnp.ndarray, flipped: jnp.ndarray | None,
                 convention: str) -> jnp.ndarray:
  """[B, E] raw features of x and flip(x) → the final embedding of `convention`."""
  check_convention(convention)
  if convention == "none" or flipped is None:
    return l2_normalize(embedding)
  if convention == "sum":
    return l2_normalize(embedding + flipped)
  return jnp.concatenate([l2_normalize(embedding), l2_normalize(flipped)], axis=-1)


def _features(model_fn: Any, variables: Any, images: jnp.ndarray) -> jnp.ndarray:
  """Raw embedding [B, E] from a Flax module or a callable; both may return (output, out)."""
  if hasattr(model_fn, "apply"):
    result = model_fn.apply(variables, images)
  else:
    result = model_fn(variables, images)
  if isinstance(result, tuple):
    result = result[1]["embedding"]
  return result.astype(jnp.float32)


def make_embed_fn(model_fn: Any, convention: str = "concat",
                  input_scale: str = "minus1_1") -> Callable:
  """jitted (variables, images uint8 [B, H, W, 3]) → embeddings [B, D], D = 2E for "concat".

  The flipped copies are interleaved with the originals ([x0, flip x0, x1, ...]) so one forward
  pass does both and every device keeps its own rows (no resharding of a batch-sharded input).
  """
  check_convention(convention)
  if input_scale not in preprocess.INPUT_SCALES:
    raise ValueError(f"input_scale must be one of {preprocess.INPUT_SCALES}, got {input_scale!r}")

  @jax.jit
  def embed(variables, images_uint8):
    x = preprocess.scale_input(images_uint8, input_scale)
    if convention == "none":
      return combine_flip(_features(model_fn, variables, x), None, convention)
    b = x.shape[0]
    both = jnp.stack([x, x[:, :, ::-1, :]], axis=1).reshape((2 * b,) + x.shape[1:])
    feats = _features(model_fn, variables, both).reshape(b, 2, -1)
    return combine_flip(feats[:, 0], feats[:, 1], convention)

  return embed


_EMBED_FNS: dict[tuple, tuple[Any, Callable]] = {}


def _cached_embed_fn(model_fn, convention, input_scale):
  key = (id(model_fn), convention, input_scale)
  if key not in _EMBED_FNS or _EMBED_FNS[key][0] is not model_fn:
    _EMBED_FNS[key] = (model_fn, make_embed_fn(model_fn, convention, input_scale))
  return _EMBED_FNS[key][1]


def replicate(variables: Any) -> Any:
  """Model variables on every device of the mesh (placed once, reused by every batch)."""
  return jax.device_put(variables, parallel.replicated())


def embed_batch(embed_fn: Callable, variables: Any, images_uint8: np.ndarray,
                batch_size: int) -> np.ndarray:
  """One padded, batch-sharded call; returns the embeddings of the real rows [n, D]."""
  n = images_uint8.shape[0]
  if jax.process_count() > 1:
    raise NotImplementedError("embed_images feeds from one host; on a multi-host job every "
                              "host embeds its own shard (use the data pipeline's sharding)")
  batch = parallel.host_batch_to_global(
      pipeline.pad_rows(np.asarray(images_uint8), batch_size)[0])
  return parallel.global_to_host(embed_fn(variables, batch))[:n]


def embed_images(model_fn: Any, variables: Any, images_uint8: np.ndarray,
                 convention: str = "concat", input_scale: str = "minus1_1",
                 batch_size: int = 64) -> np.ndarray:
  """uint8 [N, H, W, 3] RGB → L2-normalised embeddings [N, D] (numpy), padded fixed batches.

  `model_fn`: a Flax module (iResNet, or the ViT in mode "fr") or a callable
  `(variables, images float32) -> embedding [B, E] | (output, {"embedding": ...})`.
  """
  images_uint8 = np.asarray(images_uint8)
  if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
    raise ValueError(f"images must be uint8 [N, H, W, 3], got {images_uint8.dtype} "
                     f"{images_uint8.shape}")
  if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
  batch_size = parallel.round_up_to_devices(min(int(batch_size), max(len(images_uint8), 1)))
  embed_fn = _cached_embed_fn(model_fn, convention, input_scale)
  variables = replicate(variables)
  out = [embed_batch(embed_fn, variables, images_uint8[i:i + batch_size], batch_size)
         for i in range(0, len(images_uint8), batch_size)]
  if not out:
    raise ValueError("no images to embed")
  return np.concatenate(out)
