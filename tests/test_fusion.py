"""Fusion strategies (exfiqa_jax/fusion.py) vs NumPy written here. Tolerances: float32 fusion vs
float64 NumPy → 1e-5 relative."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax import fusion


def _scores(seed=0, b=64, l=12):
  return np.random.default_rng(seed).normal(2.0, 0.7, (b, l)).astype(np.float32)


def test_f_and_fw_match_numpy():
  x = _scores()
  np.testing.assert_allclose(fusion.fuse_f(x), x.astype(np.float64).mean(1), rtol=1e-5)
  w = np.arange(1, 13) / 78.0
  np.testing.assert_allclose(fusion.fuse_fw(x), x.astype(np.float64) @ w, rtol=1e-5)
  np.testing.assert_allclose(fusion.depth_weights(12), w)
  assert fusion.depth_weights(12)[-1] == pytest.approx(12 / 78)


def test_vmapped_strategies_and_subsets():
  x = _scores(1)
  strategies = {"f": fusion.mean_weights(12), "fw": fusion.depth_weights(12),
                "exits_6_7": fusion.mean_weights(12, exits=[6, 7]),
                "fw_last3": fusion.depth_weights(12, exits=[10, 11, 12]),
                "custom": np.r_[np.zeros(11), 1.0]}
  out = fusion.fuse_strategies(x, strategies)
  x64 = x.astype(np.float64)
  np.testing.assert_allclose(out["exits_6_7"], (x64[:, 5] + x64[:, 6]) / 2, rtol=1e-5)
  np.testing.assert_allclose(out["fw_last3"], (10 * x64[:, 9] + 11 * x64[:, 10] + 12 * x64[:, 11]) / 33,
                             rtol=1e-5)
  np.testing.assert_allclose(out["custom"], x64[:, 11], rtol=1e-6)
  np.testing.assert_allclose(out["fw"], fusion.fuse_fw(x), rtol=1e-6)
  with pytest.raises(ValueError, match="1-based"):
    fusion.mean_weights(12, exits=[0, 3])
  with pytest.raises(ValueError, match="entries"):
    fusion.fuse(x, np.ones(5))
