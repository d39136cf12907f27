"""Paired comparisons of quality columns: Δ pAUC with a paired bootstrap interval and p-value.

Published gaps between FIQA methods are often a few 1e-5 of pAUC (docs/evaluation.md,
"Paired comparisons"); whether such a gap is more than resampling noise needs the SAME
resamples for both columns: the pAUC of two columns on one benchmark are strongly correlated,
so their difference varies far less than either value. `bootstrap.bootstrap` draws resample b
identically for every column (and every call with the same seed), so Δ*_b = pAUC*_a,b − pAUC*_b,b
is a paired bootstrap sample of the difference.

  interval  percentile interval of Δ*_b (the same rule as the pAUC intervals)
  p-value   two-sided, from the bootstrap distribution re-centred on the null (Hall & Wilson
            1991, "Two guidelines for bootstrap hypothesis testing"):
            p = (1 + #{b : |Δ*_b − Δ| >= |Δ|}) / (1 + B),
            B = the resamples where both values are finite.
Δ < 0 means quality_a discards better. Arrays in, arrays out: which quality columns an
evaluation compares and the pauc_diff.csv rows are exfiqa_jax/evaluation/paired_columns.py.
"""
from __future__ import annotations

import numpy as np

from exfiqa_jax.metrics.bootstrap import percentile_ci


def paired_difference(point_a: np.ndarray, point_b: np.ndarray, samples_a: np.ndarray,
                      samples_b: np.ndarray, alpha: float = 0.05
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Δ = a − b, its percentile interval and two-sided p-value over resamples (axis 0).

  point_* [...], samples_* [B, ...] from the same resamples. Resamples where either value is
  NaN are left out; none left (or B = 0) gives NaN interval and p-value.
  """
  delta = np.asarray(point_a, np.float64) - np.asarray(point_b, np.float64)
  d = np.asarray(samples_a, np.float64) - np.asarray(samples_b, np.float64)
  low, high = percentile_ci(d, alpha)
  ok = np.isfinite(d)
  n = ok.sum(axis=0)
  far = np.sum(ok & (np.abs(d - delta) >= np.abs(delta)), axis=0)
  p = np.where(n > 0, (1.0 + far) / (1.0 + n), np.nan)
  return delta, low, high, p
