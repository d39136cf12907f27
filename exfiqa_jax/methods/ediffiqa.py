"""eDifFIQA (LSIbabnikz/eDifFIQA): quality = an MLP head on an iResNet's embedding
(docs/methods.md).

The checkpoint family `ediffiqa` (convert/quality_head_keys.py; the model in
models/quality_heads.py): L, M and S are iResNet-100, -50 and -18 backbones with the same head
(Linear 512 → 1024, exact GELU, Linear 1024 → 1). The head regresses DifFIQA's quality labels,
higher = better, no sign change. Input: PIL RGB, (x/255 − 0.5)/0.5, as the official
`inference.py`. One forward pass per image. eDifFIQA(T) (a MobileFaceNet backbone) is not
supported.
"""
from __future__ import annotations

from typing import Any, Mapping

from exfiqa_jax import columns
from exfiqa_jax.convert import quality_head_keys
from exfiqa_jax.methods import registry
from exfiqa_jax.methods import scorer as scorer_lib

METHOD = registry.EDIFFIQA


def scorer(module: Any, variables: Any, model_config: Mapping[str, Any]) -> scorer_lib.Scorer:
  """images → {"ediffiqa": [B]} for a loaded `ediffiqa` checkpoint (module, variables and
  model_config as `inference.load_variables` / `models.get_model` give them)."""
  return scorer_lib.head_scorer(METHOD, quality_head_keys.EDIFFIQA.name, columns.EDIFFIQA,
                                module, variables, model_config)
