"""GraFIQs (methods/grafiqs.py) against the official per-image autograd loop on a torch twin.

Tolerance: 1e-3 relative on each of the five columns (float32 both sides; the gradient sums run
over up to 112·112·3 terms; measured ~2e-7). The official raw values are Σ|grad| (lower = better); the toolkit's
columns are their negatives.
"""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax import columns, models
from exfiqa_jax.convert import iresnet_keys as ik
from exfiqa_jax.methods import grafiqs
from exfiqa_jax.models import iresnet, quality_heads, vit
from exfiqa_jax.testing import baselines_free_torch as twins
from exfiqa_jax.testing import baselines_torch as bt
from exfiqa_jax.testing import fr_torch_reference as fr_ref

RTOL = 1e-3
KEYS = ("image", "block1", "block2", "block3", "block4")


def _images(n: int, seed: int = 1) -> np.ndarray:
  return np.random.RandomState(seed).uniform(-1, 1, (n, 112, 112, 3)).astype(np.float32)


def _converted(tmodel, family):
  sd = bt.numpy_state_dict(tmodel)
  config = family.infer_config(sd)
  return models.get_model(config), family.to_flax(sd, config), config


@pytest.fixture(scope="module")
def arcface():
  tmodel = twins.tiny_iresnet(seed=3, layers=(1, 2, 1, 1))   # stage 2 has an identity unit
  module, variables, config = _converted(tmodel, ik.ARCFACE_IRESNET)
  return tmodel, grafiqs.scorer(module, variables, config), (module, variables, config)


def _check_parity(tmodel, scorer, images):
  want = twins.grafiqs(tmodel, images)
  got = scorer(images)
  assert sorted(got) == sorted(columns.GRAFIQS)
  for key, column in zip(KEYS, columns.GRAFIQS):
    assert want[key].min() > 0 and np.ptp(want[key]) > 0   # non-degenerate, images differ
    np.testing.assert_allclose(-np.asarray(got[column]), want[key], rtol=RTOL, atol=0,
                               err_msg=column)


def test_five_columns_match_the_official_loop(arcface):
  tmodel, scorer, _ = arcface
  _check_parity(tmodel, scorer, _images(3))


def test_ir_layout_matches_the_same_loop():
  tmodel = fr_ref.randomize_(fr_ref.IRBackbone((1, 2, 1, 1), (8, 16, 24, 32), 64), seed=5)
  module, variables, config = _converted(tmodel, ik.CURRICULARFACE)
  assert config["layout"] == "ir"
  _check_parity(tmodel, grafiqs.scorer(module, variables, config), _images(2, seed=4))


def test_a_batch_of_eight_equals_eight_single_calls(arcface):
  _, scorer, _ = arcface
  images = _images(8, seed=7)
  batch = scorer(images)
  for i in range(8):
    single = scorer(images[i:i + 1])
    for column in columns.GRAFIQS:
      np.testing.assert_allclose(np.asarray(single[column])[0], np.asarray(batch[column])[i],
                                 rtol=1e-6, err_msg=f"{column} image {i}")


def test_uint8_input_is_normalised_like_the_official_transform(arcface):
  _, scorer, _ = arcface
  pixels = np.random.RandomState(2).randint(0, 256, (2, 112, 112, 3)).astype(np.uint8)
  normalised = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
  a, b = scorer(pixels), scorer(normalised)
  for column in columns.GRAFIQS:
    np.testing.assert_allclose(np.asarray(a[column]), np.asarray(b[column]), rtol=1e-6)


def test_a_quality_models_backbone_is_scored_like_the_bare_iresnet(arcface):
  """CR-FIQA / eDifFIQA checkpoints are iResNets with a head: GraFIQs reads their backbone."""
  _, scorer, (module, variables, config) = arcface
  wrapped = quality_heads.BackboneWithHead(module, quality_heads.LinearHead())
  head = {"qs": {"kernel": np.ones((64, 1), np.float32), "bias": np.zeros((1,), np.float32)}}
  wrapped_variables = {"params": {"backbone": variables["params"], "head": head},
                       "batch_stats": {"backbone": variables["batch_stats"]}}
  images = _images(2, seed=9)
  got = grafiqs.scorer(wrapped, wrapped_variables, config)(images)
  want = scorer(images)
  for column in columns.GRAFIQS:
    np.testing.assert_array_equal(np.asarray(got[column]), np.asarray(want[column]))


def test_models_without_batchnorms_are_refused_naming_the_flag():
  cfg = vit.tiny_config("fr")
  with pytest.raises(ValueError, match="method"):
    grafiqs.scorer(vit.VisionTransformer(cfg), {"params": {}}, cfg.to_dict())
  tiny = iresnet.tiny_config()
  folded = iresnet.FoldedIResNet(tiny)
  with pytest.raises(ValueError, match="BatchNorms"):
    grafiqs.scorer(folded, {"params": {}}, tiny.to_dict())
