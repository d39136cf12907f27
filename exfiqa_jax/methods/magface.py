"""MagFace (IrvingMeng/MagFace): quality = the L2 norm of the unnormalised embedding
(docs/methods.md).

The MagFace loss ties an embedding's magnitude to its quality, so the norm is meaningful only for
a MagFace-trained model (checkpoint family `magface`: BN eps 2e-5, input x/255); higher = better,
no sign change. On any other FR model the same norm is a plain "embedding norm" baseline: asked
with `any_family=True`, its column is `embedding_norm`, never `magface`. One forward pass per
image; the norm is of the `features` BatchNorm1d's output (the official `gen_feat.py` writes it,
`eval_quality.py` takes its norm).

Channel order: the toolkit feeds RGB, which is what CR-FIQA's evaluation scripts fed MagFace
(cv2 reads of channel-swapped files); MagFace's own `gen_feat.py` feeds `cv2.imread` of an
ordinary image file, B,G,R — `channel_order="bgr"` reproduces that.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from exfiqa_jax import columns
from exfiqa_jax.convert import iresnet_keys
from exfiqa_jax.data import preprocess
from exfiqa_jax.methods import registry
from exfiqa_jax.methods import scorer as scorer_lib

METHOD = registry.MAGFACE


def scorer(module: Any, variables: Any, model_config: Mapping[str, Any],
           channel_order: str = "rgb", any_family: bool = False) -> scorer_lib.Scorer:
  """images → {"magface": [B]} for a `magface` checkpoint; {"embedding_norm": [B]} for another
  FR model when `any_family` (module, variables and model_config as `inference.load_variables` /
  `load_fr_model` give them, folded or not)."""
  preprocess.check_channel_order(channel_order)
  if model_config.get("family") == iresnet_keys.MAGFACE.name:
    column = columns.MAGFACE
  elif any_family:
    column = columns.EMBEDDING_NORM
  else:
    raise scorer_lib.wrong_model(METHOD, "a magface checkpoint", model_config)
  module, variables = scorer_lib.for_inference(module, variables)
  input_scale = model_config.get("input_scale", "minus1_1")

  def forward(variables, images):
    x = scorer_lib.prepare_images(images, input_scale, channel_order)
    _, out = module.apply(variables, x)
    return {column: jnp.linalg.norm(out["embedding"].astype(jnp.float32), axis=-1)}

  return scorer_lib.bind(METHOD, (column,), forward, variables)
