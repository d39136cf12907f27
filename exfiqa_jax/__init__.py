"""exfiqa-jax: face image quality with Vision Transformers in JAX/Flax.

    import exfiqa_jax as fx
    model = fx.load("vitfiqa_token.pt", num_heads=8)   # or a converted directory
    out = model.score(images)                          # uint8 [B, H, W, 3] RGB
    out = model.score(photos, align="detect")          # raw photos: detect, align, score
    from exfiqa_jax import edc, bootstrap              # EDC and pAUC; bootstrap CIs

Submodules load on first use, so `import exfiqa_jax` is cheap (docs/README.md has the map).
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

_LAZY = {"edc": "exfiqa_jax.metrics.edc", "bootstrap": "exfiqa_jax.metrics.bootstrap",
         "comparisons": "exfiqa_jax.metrics.comparisons"}


def load(*args: Any, **kwargs: Any):
  """Loads a quality model from a converted directory or a PyTorch `.pt` file; `method=` picks
  a quality method, e.g. fx.load("r100.pth", method="serfiq") (exfiqa_jax.inference.load)."""
  from exfiqa_jax.inference import load as _load
  return _load(*args, **kwargs)


def get_model(*args: Any, **kwargs: Any):
  """The Flax module for a model name or model_config (exfiqa_jax.models.get_model)."""
  from exfiqa_jax.models import get_model as _get_model
  return _get_model(*args, **kwargs)


def detect_and_align(*args: Any, **kwargs: Any):
  """Raw photos (uint8 RGB, any sizes) → aligned 112×112 crops of their faces with boxes,
  landmarks and detector confidences (exfiqa_jax.detection.faces.detect_and_align)."""
  from exfiqa_jax.detection.faces import detect_and_align as _detect_and_align
  return _detect_and_align(*args, **kwargs)


def __getattr__(name: str):
  if name in _LAZY:
    return importlib.import_module(_LAZY[name])
  raise AttributeError(f"module 'exfiqa_jax' has no attribute {name!r}")
