"""Paired comparisons (exfiqa_jax/metrics/paired.py): the p-value is calibrated under the null,
a planted difference is found, and the numbers equal a plain NumPy computation. Which columns
an evaluation compares, and its rows: tests/test_paired_columns.py.

Tolerances: Δ, interval and p-value against NumPy on the same samples: 1e-12 (float64).
"""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.metrics import bootstrap, paired


def two_columns(seed, p=800, n_gen=300, planted=False):
  """Scores that depend on a latent quality; column a and b are equally good noisy copies of
  it (correlated: the pairing matters), or b is pure noise (planted difference)."""
  rng = np.random.default_rng(seed)
  gen = np.zeros(p, bool)
  gen[rng.choice(p, n_gen, replace=False)] = True
  lat = rng.standard_normal(p)
  w = 0.2 if planted else 0.1
  scores = np.where(gen, 0.4 + 0.15 * rng.standard_normal(p) + w * lat,
                    0.1 * rng.standard_normal(p)).astype(np.float32)
  qa = lat + (0.3 if planted else 1.0) * rng.standard_normal(p)
  qb = rng.standard_normal(p) if planted else lat + rng.standard_normal(p)
  return scores, gen, np.stack([qa, qb]).astype(np.float32)


def test_p_value_uniform_under_the_null():
  """KS distance of 24 null p-values (one per seed) to U(0, 1) below 0.33 (≈ the 1 % critical
  value for n = 24; loose on purpose: few seeds, 60 resamples)."""
  ps = []
  for seed in range(24):
    scores, gen, q = two_columns(seed)
    res = bootstrap.bootstrap(scores, gen, q, fmrs=(1e-1,), num_resamples=60, seed=seed)
    ps.append(float(paired.paired_difference(res.pauc[0], res.pauc[1], res.samples[:, 0],
                                             res.samples[:, 1])[3][0]))
  ps = np.sort(ps)
  n = len(ps)
  ks = max(np.max(np.arange(1, n + 1) / n - ps), np.max(ps - np.arange(n) / n))
  assert ks < 0.33, (ks, ps)


def test_planted_difference_is_detected():
  scores, gen, q = two_columns(99, planted=True)
  res = bootstrap.bootstrap(scores, gen, q, fmrs=(1e-1,), num_resamples=60, seed=1)
  delta, low, high, p = paired.paired_difference(res.pauc[0], res.pauc[1], res.samples[:, 0],
                                                 res.samples[:, 1])
  assert delta[0] < 0 and high[0] < 0 and p[0] < 0.05, (delta, low, high, p)


def test_paired_difference_equals_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.random((40, 3)), rng.random((40, 3))
  a[3, 1] = np.nan                                          # a resample lost its genuines
  pa, pb = np.array([0.5, 0.4, 0.3]), np.array([0.45, 0.42, 0.3])
  delta, low, high, p = paired.paired_difference(pa, pb, a, b, alpha=0.1)
  for f in range(3):
    d = (a[:, f] - b[:, f])[np.isfinite(a[:, f] - b[:, f])]
    dd = pa[f] - pb[f]
    assert delta[f] == dd
    assert low[f] == pytest.approx(np.percentile(d, 5), abs=1e-12)
    assert high[f] == pytest.approx(np.percentile(d, 95), abs=1e-12)
    assert p[f] == pytest.approx((1 + np.sum(np.abs(d - dd) >= abs(dd))) / (1 + len(d)), abs=1e-12)
  nan = paired.paired_difference(pa, pb, np.zeros((0, 3)), np.zeros((0, 3)))
  assert np.all(np.isnan(nan[1])) and np.all(np.isnan(nan[3]))
