"""CR-FIQA (fdbtrs/CR-FIQA): quality = the `qs` head on an iResNet's embedding (docs/methods.md).

The checkpoint family `crfiqa` (convert/quality_head_keys.py; the model in
models/quality_heads.py). The network learnt to predict its sample's certainty ratio, so higher
`qs` = better quality, no sign change. Input: RGB, (x/255 − 0.5)/0.5 — the official scripts read
channel-swapped files with cv2 and so feed the original RGB pixels. One forward pass per image;
the embedding beside `qs` is a usable FR embedding (the model is also an FR model).
"""
from __future__ import annotations

from typing import Any, Mapping

from exfiqa_jax import columns
from exfiqa_jax.convert import quality_head_keys
from exfiqa_jax.methods import registry
from exfiqa_jax.methods import scorer as scorer_lib

METHOD = registry.CRFIQA


def scorer(module: Any, variables: Any, model_config: Mapping[str, Any]) -> scorer_lib.Scorer:
  """images → {"crfiqa": [B]} for a loaded `crfiqa` checkpoint (module, variables and
  model_config as `inference.load_variables` / `models.get_model` give them)."""
  return scorer_lib.head_scorer(METHOD, quality_head_keys.CRFIQA.name, columns.CRFIQA, module,
                                variables, model_config)
