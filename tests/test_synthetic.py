"""Synthetic faces: determinism, disjoint splits, degradations that do what they say, pairs."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.data import synthetic

SIZES = synthetic.SplitSizes(train=6, val=2, test=5, per_identity=4)


def test_deterministic_and_seed_dependent():
  a = synthetic.make_split(3, "test", SIZES)
  b = synthetic.make_split(3, "test", SIZES)
  c = synthetic.make_split(4, "test", SIZES)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.severity, b.severity)
  assert a.names == b.names
  assert np.mean(a.images != c.images) > 0.5
  assert a.images.shape == (20, 112, 112, 3) and a.images.dtype == np.uint8
  assert np.all((a.severity >= 0) & (a.severity <= 1))


def test_identity_disjoint_splits_and_stable_identities():
  ids = {s: set(synthetic.make_split(0, s, SIZES, degraded=False).identity) for s in synthetic.SPLITS}
  assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"]
  assert not ids["val"] & ids["test"]
  # An identity's parameters do not depend on how many identities the split has.
  p1 = synthetic.identity_params(0, [7, 8])
  p2 = synthetic.identity_params(0, [8])
  for k in p1:
    np.testing.assert_array_equal(p1[k][1], p2[k][0])
  with pytest.raises(ValueError, match="unknown split"):
    SIZES.identity_range("dev")


def test_severity_zero_is_identity_and_damage_grows():
  rng = np.random.default_rng(0)
  clean = synthetic.render(0, np.arange(4), rng)
  np.testing.assert_array_equal(
      synthetic.degrade(clean, np.zeros(4), np.arange(4), rng), clean)
  for k, name in enumerate(synthetic.DEGRADATIONS):
    damage = []
    for s in (0.3, 0.7, 1.0):
      out = synthetic.degrade(clean, np.full(4, s, np.float32), np.full(4, k), rng)
      damage.append(np.mean(np.abs(out.astype(float) - clean)))
    assert damage[0] < damage[2], (name, damage)
    assert damage[2] > 6.0, (name, damage)         # destructive at the top (of 255)


def _nn_identification(images: np.ndarray, labels: np.ndarray) -> float:
  """Leave-one-out nearest neighbour in pixel space (an independent, model-free recogniser)."""
  x = images.reshape(len(images), -1).astype(np.float64)
  x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
  d = ((x[:, None] - x[None]) ** 2).sum(-1)
  np.fill_diagonal(d, np.inf)
  return float(np.mean(labels[np.argmin(d, 1)] == labels))


def test_identity_signal_and_degradations_hurt_it():
  sizes = synthetic.SplitSizes(train=0, val=0, test=12, per_identity=4)
  clean = synthetic.make_split(1, "test", sizes, degraded=False)
  assert _nn_identification(clean.images, clean.label) >= 0.9
  rng = np.random.default_rng(1)
  n = len(clean.images)
  bad = synthetic.degrade(clean.images, np.ones(n, np.float32),
                          np.arange(n) % len(synthetic.DEGRADATIONS), rng)
  assert _nn_identification(bad, clean.label) <= 0.7


def test_degrade_rejects_bad_input():
  rng = np.random.default_rng(0)
  img = np.zeros((2, 112, 112, 3), np.uint8)
  with pytest.raises(ValueError, match="severity"):
    synthetic.degrade(img, np.array([0.5, 1.5]), np.zeros(2, int), rng)
  with pytest.raises(ValueError, match="uint8"):
    synthetic.degrade(img.astype(np.float32), np.zeros(2), np.zeros(2, int), rng)
  with pytest.raises(ValueError, match="kind"):
    synthetic.degrade(img, np.zeros(2), np.array([0, 9]), rng)


def test_pairs_all_genuine_and_sampled_impostors():
  label = np.repeat(np.arange(5), 3)
  pairs, genuine = synthetic.make_pairs(label, 0, impostors_per_genuine=2.0)
  assert genuine.sum() == 5 * 3
  assert (~genuine).sum() == 30
  assert np.all(pairs[:, 0] < pairs[:, 1])
  assert len({tuple(p) for p in pairs}) == len(pairs)
  np.testing.assert_array_equal(label[pairs[:, 0]] == label[pairs[:, 1]], genuine)
  again, _ = synthetic.make_pairs(label, 0, impostors_per_genuine=2.0)
  np.testing.assert_array_equal(pairs, again)
  with pytest.raises(ValueError, match="at least two"):
    synthetic.make_pairs(np.arange(4), 0)


def test_tfds_builder_without_manual_dir(tmp_path):
  from exfiqa_jax.data import builders
  opts = dict(train_identities=3, val_identities=2, test_identities=4, per_identity=3, seed=5)
  source, info = builders.load("synthetic_faces/test", data_dir=str(tmp_path), decode=True,
                               **opts)
  faces = synthetic.make_split(5, "test", synthetic.SplitSizes(3, 2, 4, 3))
  assert len(source) == len(faces.images) == 12
  for k in (0, 7, 11):
    record = source[k]
    np.testing.assert_array_equal(record["image"], faces.images[k])    # PNG: lossless
    assert record["name"] == faces.names[k] and record["label"] == faces.label[k]
    assert record["severity"] == pytest.approx(faces.severity[k])
  np.testing.assert_allclose(info.record_arrays["severity"], faces.severity)
  pairs, genuine = synthetic.make_pairs(faces.label, 5)
  np.testing.assert_array_equal(info.pairs["index_a"], pairs[:, 0])
  np.testing.assert_array_equal(info.pairs["is_genuine"], genuine)
  train, info_t = builders.load("synthetic_faces/train", data_dir=str(tmp_path), **opts)
  assert len(train) == 9 and info_t.pairs is None
  with pytest.raises(ValueError, match="split must be one of"):
    builders.load("synthetic_faces/dev", data_dir=str(tmp_path), **opts)
