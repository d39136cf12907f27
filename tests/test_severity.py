"""evaluation/severity.py: Spearman's rank correlation (average ranks for ties)."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.evaluation import severity


def test_spearman_matches_plain_definition():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 5, 40).astype(float)            # many ties
  b = a + rng.normal(size=40)

  def ranks(x):                                        # average ranks, written plainly
    return np.array([np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x])

  ra, rb = ranks(a), ranks(b)
  expected = np.corrcoef(ra, rb)[0, 1]
  assert severity.spearman(a, b) == pytest.approx(expected, abs=1e-12)
