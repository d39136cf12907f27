"""The model factory: names users know build the architectures they expect, model_configs from
converted directories build the same module, and the one GFLOPs function."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax import models
from exfiqa_jax.models import iresnet, vit


@pytest.mark.parametrize("name,cls,field,value", [
    ("vit_s_token", vit.VisionTransformer, "mode", "token"),
    ("vit_s_crfiqa", vit.VisionTransformer, "mode", "crfiqa"),
    ("cvlface_vit_b", vit.VisionTransformer, "depth", 24),
    ("r100", iresnet.IResNet, "layers", (3, 13, 30, 3)),
    ("curricularface_ir101", iresnet.IResNet, "layout", "ir")])
def test_names_build_the_expected_architecture(name, cls, field, value):
  module = models.get_model(name)
  assert isinstance(module, cls) and getattr(module.config, field) == value


def test_model_config_dicts_build_the_same_module():
  cfg = vit.tiny_config("crfiqa")
  from_dict = models.get_model({"family": "vit", "input_scale": "minus1_1", **cfg.to_dict()})
  assert from_dict.config == cfg
  ir = iresnet.tiny_config()
  assert models.get_model({"family": "arcface_iresnet", **ir.to_dict()}).config == ir
  with pytest.raises(ValueError, match="unknown model 'vit_xl'"):
    models.get_model("vit_xl")
  with pytest.raises(ValueError, match="neither a ViT"):
    models.get_model({"family": "x"})


def test_gflops_per_exit_and_fusion():
  per_exit, fusion = models.gflops(vit.vit_s_config("token"))
  assert per_exit.shape == (12,) and np.all(np.diff(per_exit) > 0)
  assert round(per_exit[-1], 2) == 11.49 and round(per_exit[5], 2) == 5.76
  assert round(models.gflops(vit.vit_s_config("crfiqa"))[0][6], 2) == 6.75
  # The token head reads the quality token (width), not the embedding: 2·width FLOPs.
  wide = vit.tiny_config("token", width=64, num_heads=4, embed_dim=16)
  per_exit, fusion = models.gflops(wide)
  assert fusion == pytest.approx(per_exit[-1] + (wide.depth - 1) * 2 * wide.width / 1e9)
