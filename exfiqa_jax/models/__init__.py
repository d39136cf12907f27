"""Every architecture of the toolkit, built by `get_model` from a name or a model_config.

    from exfiqa_jax import models
    module = models.get_model("vit_s_token")             # names users know (see NAMES)
    module = models.get_model(model_config)              # a converted model's model_config.json

A model_config with a "mode" field is a ViT (ViT-FIQA token/crfiqa/full, FR ViTs as "fr");
one with a "layout" field an iResNet/IR face-recognition CNN.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np

from exfiqa_jax.models import iresnet, quality_heads, vit

NAMES: dict[str, Callable[[], Any]] = {
    "vit_s_token": lambda: vit.vit_s_config("token"),
    "vit_s_crfiqa": lambda: vit.vit_s_config("crfiqa"),
    "vit_s_full": lambda: vit.vit_s_config("full"),
    "cvlface_vit_s": lambda: vit.cvlface_config("S"),
    "cvlface_vit_b": lambda: vit.cvlface_config("B"),
    "vit_tiny_token": lambda: vit.tiny_config("token"),
    "r18": lambda: iresnet.iresnet_config(18),
    "r34": lambda: iresnet.iresnet_config(34),
    "r50": lambda: iresnet.iresnet_config(50),
    "r100": lambda: iresnet.iresnet_config(100),
    "elasticface_r100": lambda: iresnet.iresnet_config(100),
    "magface_r100": lambda: iresnet.iresnet_config(100),
    "curricularface_ir101": lambda: iresnet.iresnet_config(100, layout="ir"),
}


def model_config_object(model_config: Mapping[str, Any]) -> vit.ViTConfig | iresnet.IResNetConfig:
  """The architecture dataclass of a model_config dict (extra fields such as "family" ignored)."""
  if "mode" in model_config:
    return vit.ViTConfig.from_dict({k: v for k, v in model_config.items()
                                    if k in vit.ViTConfig.__dataclass_fields__})
  if "layout" in model_config:
    return iresnet.IResNetConfig.from_dict(dict(model_config))
  raise ValueError(f"model config {sorted(model_config)} is neither a ViT (no 'mode') nor an "
                   "iResNet (no 'layout')")


def get_model(spec: str | Mapping[str, Any] | vit.ViTConfig | iresnet.IResNetConfig,
              dtype: Any = None) -> Any:
  """The Flax module for a name in NAMES, a model_config dict or a config dataclass."""
  if isinstance(spec, str):
    if spec not in NAMES:
      raise ValueError(f"unknown model {spec!r}; known: {sorted(NAMES)}")
    spec = NAMES[spec]()
  if isinstance(spec, Mapping) and quality_heads.is_quality_config(spec):   # CR-FIQA, eDifFIQA
    return quality_heads.get_model(spec, dtype)
  cfg = spec if isinstance(spec, (vit.ViTConfig, iresnet.IResNetConfig)) else \
      model_config_object(spec)
  if isinstance(cfg, vit.ViTConfig):
    return vit.VisionTransformer(cfg) if dtype is None else vit.VisionTransformer(cfg, dtype=dtype)
  import jax.numpy as jnp
  return iresnet.IResNet(cfg, dtype=dtype or jnp.float32)


def gflops(model_config: Mapping[str, Any] | vit.ViTConfig, exit: int | None = None
           ) -> tuple[np.ndarray, float]:
  """(GFLOPs per image to score at each exit 1..k [k], GFLOPs of a fusion of exits 1..k) of a
  ViT quality model; k = `exit` (the program truncated after block k), default 0/None = all L.
  The one cost formula (vit.gflops_program; docs/methods.md)."""
  cfg = _vit_config(model_config)
  k = cfg.depth if not exit else int(exit)
  if not 1 <= k <= cfg.depth:
    raise ValueError(f"exit must be in 1..{cfg.depth} (0 or None = all exits), got {exit}")
  return (np.asarray(vit.gflops_per_exit(cfg)[:k], np.float64),
          float(vit.gflops_fusion(cfg, k)))


def program_gflops(model_config: Mapping[str, Any] | vit.ViTConfig, blocks, heads) -> np.ndarray:
  """GFLOPs per image of a program running `blocks` blocks and `heads` exit heads (arrays
  broadcast; the adaptive cascade's per-image cost, exfiqa_jax/models/exits.py): same formula
  as `gflops`."""
  return np.asarray(vit.gflops_program(_vit_config(model_config), blocks, heads), np.float64)


def _vit_config(model_config: Mapping[str, Any] | vit.ViTConfig) -> vit.ViTConfig:
  cfg = model_config if isinstance(model_config, vit.ViTConfig) else \
      model_config_object(model_config)
  if not isinstance(cfg, vit.ViTConfig):
    raise ValueError("GFLOPs per exit are defined for ViT quality models only")
  return cfg
