"""SER-FIQ (methods/serfiq.py) against the official T-pass loop on a torch twin fed the same
dropout masks.

Tolerance: 1e-6 relative on s (float32 tails and float64 distances in the twin, float32 Gram
distances here); the same images and masks give the same numbers, not a statistical match.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from exfiqa_jax import columns, models
from exfiqa_jax.convert import iresnet_keys as ik
from exfiqa_jax.methods import serfiq
from exfiqa_jax.models import iresnet, vit
from exfiqa_jax.testing import baselines_free_torch as twins
from exfiqa_jax.testing import baselines_torch as bt

PASSES = 100
RTOL = 1e-6


def _images(n: int = 3, seed: int = 1) -> np.ndarray:
  return np.random.RandomState(seed).uniform(-1, 1, (n, 112, 112, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def arcface():
  tmodel = twins.tiny_iresnet(seed=3, layers=(1, 1, 1, 1))
  sd = bt.numpy_state_dict(tmodel)
  config = ik.ARCFACE_IRESNET.infer_config(sd)
  return tmodel, models.get_model(config), ik.ARCFACE_IRESNET.to_flax(sd, config), config


def _masks(images: np.ndarray, module, seed: int = 0, rate: float = 0.5) -> np.ndarray:
  cfg = module.config
  features = cfg.widths[-1] * (cfg.img_size // 16) ** 2
  seeds = serfiq.image_seeds(jnp.asarray(images))
  return np.asarray(serfiq.dropout_masks(seed, seeds, PASSES, features, rate))


def test_equals_the_official_loop_fed_the_same_masks(arcface):
  tmodel, module, variables, config = arcface
  images = _images()
  masks = _masks(images, module)
  assert 0.45 < masks.mean() < 0.55 and not np.array_equal(masks[:, 0], masks[:, 1])
  want_s, want_rescaled = twins.serfiq(tmodel, images, masks)
  got = serfiq.scorer(module, variables, config, passes=PASSES)(images)
  assert list(got) == [columns.SERFIQ]
  np.testing.assert_allclose(np.asarray(got[columns.SERFIQ]), want_s, rtol=RTOL)
  assert np.ptp(want_s) > 1e-4                      # the images really score differently
  official = serfiq.scorer(module, variables, config, passes=PASSES, rescale=True)(images)
  # α = 130 multiplies s's rounding: d log(rescaled) / ds ≈ α for s well below r.
  np.testing.assert_allclose(np.asarray(official[columns.SERFIQ]), want_rescaled, rtol=130 * 1e-6)


def test_the_tail_is_the_models_own_head(arcface):
  _, module, variables, _ = arcface
  images = jnp.asarray(_images(2))
  features = serfiq.trunk_features(module, variables, images)
  embedding = iresnet.head_after_dropout(module.config, variables, features)
  np.testing.assert_allclose(np.asarray(embedding),
                             np.asarray(module.apply(variables, images)[0]), rtol=1e-6,
                             atol=1e-6)


def test_seeded_reruns_are_bit_identical_and_batch_independent(arcface):
  _, module, variables, config = arcface
  images = _images(4, seed=6)
  scorer = serfiq.scorer(module, variables, config, passes=20, seed=7)
  first = np.asarray(scorer(images)[columns.SERFIQ])
  np.testing.assert_array_equal(np.asarray(scorer(images)[columns.SERFIQ]), first)
  again = serfiq.scorer(module, variables, config, passes=20, seed=7)(images)
  np.testing.assert_array_equal(np.asarray(again[columns.SERFIQ]), first)
  other = serfiq.scorer(module, variables, config, passes=20, seed=8)(images)
  assert not np.array_equal(np.asarray(other[columns.SERFIQ]), first)
  alone = serfiq.scorer(module, variables, config, passes=20, seed=7)(images[2:3])
  np.testing.assert_allclose(np.asarray(alone[columns.SERFIQ])[0], first[2], rtol=1e-6)


def test_memory_stays_flat_in_the_number_of_passes(arcface):
  """Growing T from 20 to 100 adds the kept embeddings and distances, not T masks."""
  _, module, variables, config = arcface
  images = jnp.asarray(_images(4))

  def temp_bytes(passes):
    scorer = serfiq.scorer(module, variables, config, passes=passes)
    return scorer.apply.lower(variables, images).compile().memory_analysis().temp_size_in_bytes

  cfg = module.config
  mask_bytes = 4 * images.shape[0] * cfg.widths[-1] * (cfg.img_size // 16) ** 2
  growth = temp_bytes(100) - temp_bytes(20)
  assert growth < 0.25 * 80 * mask_bytes, (growth, mask_bytes)


def test_models_without_the_dropout_tail_are_refused_naming_the_flag():
  cfg = vit.tiny_config("fr")
  with pytest.raises(ValueError, match="method"):
    serfiq.scorer(vit.VisionTransformer(cfg), {"params": {}}, cfg.to_dict())
