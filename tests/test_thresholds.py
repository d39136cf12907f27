"""Quality thresholds (exfiqa_jax/calibrate/thresholds.py) against plain definitions: the discard
picker and the FNMR picker (vs the FIQA-convention EDC written plainly)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from exfiqa_jax.calibrate import thresholds


def _plain_fiqa_fnmr(scores, gen, pq, fmr, r):
  """The FIQA-convention EDC at one level, written plainly: drop the first int(r·P) pairs of the
  stable quality sort, threshold = observed value whose FMR is closest (first = lowest),
  genuine accepted iff strictly above it."""
  keep = np.argsort(pq, kind="stable")[int(np.float64(r) * len(pq)):]
  s, g = scores[keep].astype(np.float64), gen[keep]
  imp, gs = s[~g], s[g]
  u = np.unique(s)
  fmr_u = np.array([(imp >= v).sum() for v in u]) / len(imp)
  ustar = u[np.argmin(np.abs(fmr_u - fmr))]
  return 1.0 - (gs > ustar).sum() / len(gs)


def _pairs(seed=0, p=500):
  rng = np.random.default_rng(seed)
  gen = np.zeros(p, bool)
  gen[rng.choice(p, p // 5, replace=False)] = True
  q = rng.random(p).astype(np.float32)
  scores = np.where(gen, 0.6 + 0.5 * q + 0.15 * rng.normal(size=p),
                    0.1 * rng.normal(size=p)).astype(np.float32)
  return scores, gen, q



def test_discard_threshold_hits_its_fraction():
  q = np.random.default_rng(1).normal(size=997).astype(np.float32)
  for f in (0.0, 0.05, 0.2, 1 / 3, 0.9):
    pick = thresholds.discard_threshold(q, f, resamples=50, seed=3)
    k = int(np.float64(f) * q.size)
    assert np.mean(q < pick.threshold) == pick.achieved == k / q.size
    assert abs(pick.achieved - f) < 1 / q.size
    assert pick.ci_low <= pick.threshold <= pick.ci_high
    assert pick.threshold in q                      # an observed value: exact in float32
  again = thresholds.discard_threshold(q, 0.2, resamples=50, seed=3)
  assert again == thresholds.discard_threshold(q, 0.2, resamples=50, seed=3)   # seeded
  tied = np.repeat(np.arange(10, dtype=np.float32), 10)
  assert thresholds.discard_threshold(tied, 0.25, resamples=0).achieved == 0.2   # whole ties kept


def test_fnmr_threshold_reaches_target_vs_plain_numpy():
  scores, gen, q = _pairs()
  grid = thresholds.fnmr_grid(0.02, 0.6)
  plain = np.array([_plain_fiqa_fnmr(scores, gen, q, 1e-2, r) for r in grid])
  target = float((plain[0] + plain.min()) / 2)
  pick = thresholds.fnmr_threshold(scores, gen, q, target, fmr=1e-2, grid=grid, resamples=3)
  assert pick.reached
  r = int(np.flatnonzero(np.isclose(grid, pick.discard, atol=1 / len(q)))[0])
  assert plain[r] <= target and np.all(plain[:r] > target)          # the smallest such level
  assert pick.achieved == pytest.approx(plain[r], abs=1e-12)
  cut = int(np.float64(grid[r]) * len(q))
  assert pick.threshold == np.sort(q, kind="stable")[cut]
  assert np.isfinite(pick.ci_low) and pick.ci_low <= pick.ci_high
  never = thresholds.fnmr_threshold(scores, gen, q, -1.0, fmr=1e-2, grid=grid, resamples=0)
  assert not never.reached and math.isnan(never.threshold)
