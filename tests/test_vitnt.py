"""ViTNT-FIQA (methods/vitnt.py, the sums in models/vit.py's block scan) against the official
`calculate_ntfiq` loop on our torch twin (testing/baselines_free_torch.ntfiq).

Tolerance: 1e-5 relative (float32 both sides; measured ~5e-7 on the tiny random ViT, whose
tokens move a lot between blocks, so its scores are small).
"""
from __future__ import annotations

import jax
import numpy as np
import pytest

from exfiqa_jax import columns
from exfiqa_jax.convert import vit_keys
from exfiqa_jax.methods import vitnt
from exfiqa_jax.models import iresnet, vit
from exfiqa_jax.testing import baselines_free_torch as twins
from exfiqa_jax.testing import torch_reference as tr

RTOL = 1e-5
# A CVLFace-style FR ViT (mode "fr": every token a patch), 7×7 patches, four blocks.
FR = vit.ViTConfig(mode="fr", width=32, depth=4, num_heads=4, patch_size=16, mlp_dim=64,
                   embed_dim=24, has_mask_token=False)


def _images(n: int = 3, seed: int = 2) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, 112, 112, 3)).astype(np.float32)


def _twin_and_variables(cfg: vit.ViTConfig, seed: int = 1):
  twin = tr.random_init_(tr.VitFiqaTorch(**tr.tiny_kwargs(
      cfg.mode, width=cfg.width, depth=cfg.depth, num_heads=cfg.num_heads,
      patch_size=cfg.patch_size, mlp_dim=cfg.mlp_dim, embed_dim=cfg.embed_dim,
      mask_token=cfg.has_mask_token)), seed)
  sd = {k: v.numpy() for k, v in twin.state_dict().items()}
  return twin, vit_keys.state_dict_to_variables(sd, cfg.to_dict())


@pytest.fixture(scope="module")
def fr_model():
  twin, variables = _twin_and_variables(FR)
  return twin, vit.VisionTransformer(FR), variables, FR.to_dict()


def _official(twin, images, blocks, attention, scaling=vitnt.DEFAULT_SCALING):
  kw = dict(blocks_to_use=list(blocks) if blocks else None, scaling=scaling,
            last_block_attention_only=attention == "last")
  return (twins.ntfiq(twin, images, use_attention_weights=True, **kw),
          twins.ntfiq(twin, images, use_attention_weights=False, **kw))


@pytest.mark.parametrize("blocks, attention, scaling", [
    (None, "last", 8.0),       # calculate_ntfiq's default: every block
    ((0, 1, 2), "last", 8.0),  # the first k (the official IJB-C run: 20 of 24)
    ((0, 2, 3), "last", 8.0),  # any subset: the official loop runs only those blocks
    (None, "mean", 8.0),       # last_block_attention_only=False
    (None, "last", 1.0),       # patch qualities mid-range (the random tokens move a lot)
])
def test_scores_match_the_official_loop(fr_model, blocks, attention, scaling):
  twin, module, variables, config = fr_model
  images = _images()
  weighted, uniform = _official(twin, images, blocks, attention, scaling)
  got = vitnt.scorer(module, variables, config, blocks=blocks, attention=attention,
                     scaling=scaling)(images)
  assert sorted(got) == sorted(vitnt.COLUMNS)
  np.testing.assert_allclose(np.asarray(got[columns.VITNT]), weighted, rtol=RTOL)
  np.testing.assert_allclose(np.asarray(got[columns.VITNT_UNIFORM]), uniform, rtol=RTOL)
  resolution = 100 * RTOL * uniform.max()            # differences far above the tolerance:
  assert np.ptp(uniform) > resolution                 # the images really differ,
  assert np.abs(weighted - uniform).max() > resolution   # the weighting really weighs


def test_in_the_models_pass_other_outputs_stay_bit_identical(fr_model):
  twin, module, variables, _ = fr_model
  images = _images()
  spec = vitnt.in_pass_spec(FR.depth, (0, 1, 2))
  plain = jax.jit(lambda v, x: module.apply(v, x, return_attn_maps=True))(variables, images)[1]
  with_vitnt = jax.jit(lambda v, x: module.apply(v, x, return_attn_maps=True, vitnt=spec))(
      variables, images)[1]
  for key, value in plain.items():
    np.testing.assert_array_equal(np.asarray(with_vitnt[key]), np.asarray(value), err_msg=key)
  got = vitnt.columns_from_outputs(with_vitnt)
  weighted, uniform = _official(twin, images, (0, 1, 2), "last")
  np.testing.assert_allclose(np.asarray(got[columns.VITNT]), weighted, rtol=RTOL)
  np.testing.assert_allclose(np.asarray(got[columns.VITNT_UNIFORM]), uniform, rtol=RTOL)
  with pytest.raises(ValueError, match="own program"):
    vitnt.in_pass_spec(FR.depth, (0, 2, 3))


def test_vit_fiqa_patch_tokens_extension():
  cfg = vit.tiny_config("token", depth=3)
  twin, variables = _twin_and_variables(cfg, seed=4)
  images = _images(2, seed=5)
  weighted, uniform = _official(twin, images, None, "last")
  got = vitnt.scorer(vit.VisionTransformer(cfg), variables, cfg.to_dict())(images)
  np.testing.assert_allclose(np.asarray(got[columns.VITNT]), weighted, rtol=RTOL)
  np.testing.assert_allclose(np.asarray(got[columns.VITNT_UNIFORM]), uniform, rtol=RTOL)


def test_wrong_model_and_bad_blocks_are_clear_errors(fr_model):
  _, module, variables, config = fr_model
  tiny = iresnet.tiny_config()
  with pytest.raises(ValueError, match="method"):
    vitnt.scorer(iresnet.IResNet(tiny), {"params": {}}, tiny.to_dict())
  for blocks in ((1,), (2, 1), (0, 4)):
    with pytest.raises(ValueError, match="strictly increasing"):
      vitnt.scorer(module, variables, config, blocks=blocks)
  token = vit.VisionTransformer(vit.tiny_config("token"))
  token_variables = token.init(jax.random.key(0), _images(1))
  with pytest.raises(ValueError, match="inference"):
    token.apply(token_variables, _images(1), train=True, vitnt=vit.VitntSpec((0, 1)),
                rngs={"dropout": jax.random.key(0), "masking": jax.random.key(1)})
