"""The inputs of the EDC (exfiqa_jax/metrics/comparisons.py): pair quality, cosine scores, IJB-C
templates on a miniature by hand, the seeded random column and the L2 normalisation.
Faults (bad indices, traced pairs): tests/test_faults.py."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.metrics import comparisons


def test_pair_quality_and_scores():
  iq = np.array([[0.5, 0.25, 0.75], [1.0, 3.0, 2.0]], np.float32)
  pairs = np.array([[0, 1], [1, 2], [2, 0]])
  np.testing.assert_array_equal(comparisons.image_to_pair_quality(iq, pairs),
                                [[0.25, 0.25, 0.5], [1.0, 2.0, 1.0]])
  np.testing.assert_array_equal(comparisons.image_to_pair_quality(iq, pairs, uncertainty=True),
                                [[0.5, 0.75, 0.75], [3.0, 3.0, 2.0]])
  rng = np.random.default_rng(0)
  e, fe = rng.standard_normal((7, 16)), rng.standard_normal((7, 16))
  pairs = rng.integers(0, 7, (50, 2))

  def cos(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)

  np.testing.assert_allclose(comparisons.pair_scores(e, pairs, chunk_size=16),
                             cos(e[pairs[:, 0]], e[pairs[:, 1]]), atol=1e-6)
  np.testing.assert_allclose(comparisons.pair_scores(e, pairs, flip_embeddings=fe, chunk_size=64),
                             (cos(e[pairs[:, 0]], e[pairs[:, 1]]) +
                              cos(fe[pairs[:, 0]], fe[pairs[:, 1]])) / 2, atol=1e-6)
  with pytest.raises(ValueError, match="pair indices"):
    comparisons.pair_scores(e, np.array([[0, 7]]))


def test_ijbc_template_aggregation_miniature():
  # template 20: media 1 (two images), media 2 (one image); template 10: media 1 (one image,
  # media shared with template 20 but a separate group); template 30: one image.
  f = np.array([[1, 0], [0, 1], [2, 2], [0, 3], [-1, 1]], np.float32)
  tids = np.array([20, 20, 20, 10, 30])
  mids = np.array([1, 1, 2, 1, 5])
  feats, index = comparisons.aggregate_templates(f, tids, mids)
  np.testing.assert_array_equal(index.templates, [10, 20, 30])
  t20 = np.array([0.5, 0.5]) + np.array([2, 2])            # mean of media 1 + media 2
  want = np.stack([[0, 1], t20 / np.linalg.norm(t20), np.array([-1, 1]) / np.sqrt(2)])
  np.testing.assert_allclose(feats, want, atol=1e-6)
  iq = np.array([[0.9, 0.4, 0.7, 0.3, 0.8]], np.float32)
  np.testing.assert_allclose(comparisons.template_quality(iq, index), [[0.3, 0.4, 0.8]])
  np.testing.assert_allclose(comparisons.template_quality(iq, index, uncertainty=True), [[0.3, 0.9, 0.8]])
  rows = index.pair_rows(np.array([[20, 10], [30, 20]]))
  np.testing.assert_array_equal(rows, [[1, 0], [2, 1]])
  np.testing.assert_allclose(comparisons.pair_scores(feats, rows),
                             [want[1] @ want[0], want[2] @ want[1]], atol=1e-6)
  with pytest.raises(ValueError, match="no images"):
    index.pair_rows(np.array([[20, 99]]))


def test_random_quality_and_l2_normalize():
  a = comparisons.random_quality(1000, 3)
  assert a.dtype == np.float32 and a.shape == (1000,) and np.unique(a).size == 1000
  np.testing.assert_array_equal(a, comparisons.random_quality(1000, 3))
  assert not np.array_equal(a, comparisons.random_quality(1000, 4))
  np.testing.assert_array_equal(a, np.random.default_rng([3, 0x5EED]).random(1000)
                                .astype(np.float32))
  x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
  np.testing.assert_allclose(comparisons.l2_normalize(x), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
