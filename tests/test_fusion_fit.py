"""Fitting the fusion (exfiqa_jax/calibrate/fusion_fit.py): normalisers vs NumPy written here
(applied by fusion.Normalizer), learned weights on a synthetic case. Tolerances: float32 vs
float64 NumPy → 1e-5 relative."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax import fusion
from exfiqa_jax.calibrate import fusion_fit


def _scores(seed=0, b=64, l=12):
  return np.random.default_rng(seed).normal(2.0, 0.7, (b, l)).astype(np.float32)


@pytest.mark.parametrize("method", ["zscore", "minmax", "rank", "none"])
def test_normalizations(method):
  calib = _scores(2, b=200)
  test = _scores(3, b=50)
  norm = fusion_fit.fit_normalizer(calib, method)
  got = np.asarray(norm(test), np.float64)
  c, t = calib.astype(np.float64), test.astype(np.float64)
  if method == "zscore":
    want = (t - c.mean(0)) / c.std(0)
  elif method == "minmax":
    want = (t - c.min(0)) / (c.max(0) - c.min(0))
  elif method == "rank":
    want = np.stack([(np.searchsorted(np.sort(c[:, l]), t[:, l], "left") +
                      np.searchsorted(np.sort(c[:, l]), t[:, l], "right")) / (2 * len(c))
                     for l in range(c.shape[1])], 1)
  else:
    want = t
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="method"):
    fusion_fit.fit_normalizer(calib, "softmax")


def _synthetic_pairs(seed, n_img=600, n_pairs=3000, l=4, informative=2):
  """Exit `informative` (1-based) predicts how badly genuine comparisons degrade; others noise."""
  rng = np.random.default_rng(seed)
  latent = rng.random(n_img)                         # true image quality
  x = rng.standard_normal((n_img, l)).astype(np.float32)
  x[:, informative - 1] = latent + 0.05 * rng.standard_normal(n_img)
  pairs = rng.integers(0, n_img, (n_pairs, 2))
  gen = rng.random(n_pairs) < 0.4
  pq = np.minimum(latent[pairs[:, 0]], latent[pairs[:, 1]])
  scores = np.where(gen, 0.15 + 0.6 * pq + 0.05 * rng.standard_normal(n_pairs),
                    0.05 * rng.standard_normal(n_pairs)).astype(np.float32)
  return x, pairs, scores, gen


def test_fit_fusion_weights_finds_the_informative_exit():
  x, pairs, scores, gen = _synthetic_pairs(0)
  fit = fusion_fit.fit_fusion_weights(x, pairs, scores, gen, fmr=1e-2, steps=150,
                                      learning_rate=0.1, init="f")
  assert np.all(fit.weights >= 0) and fit.weights.sum() == pytest.approx(1.0, abs=1e-6)
  assert fit.final < fit.initial * 0.9
  assert int(np.argmax(fit.weights)) == 1 and fit.weights[1] > 0.5
  uniform = float(fusion_fit.surrogate_pauc(fusion.mean_weights(4), x, pairs, scores, gen, 1e-2))
  assert fit.initial == pytest.approx(uniform, rel=1e-5)
  # reported on held-out data: the learned weights also beat uniform on a fresh draw
  x2, pairs2, scores2, gen2 = _synthetic_pairs(1)
  held = float(fusion_fit.surrogate_pauc(fit.weights, x2, pairs2, scores2, gen2, 1e-2))
  held_uniform = float(fusion_fit.surrogate_pauc(fusion.mean_weights(4), x2, pairs2, scores2, gen2,
                                                 1e-2))
  assert held < held_uniform
