"""The bootstrap (exfiqa_jax/metrics/bootstrap.py): every resample equals the plain EDC of its
resampled pair list (the NumPy reference, exfiqa_jax/testing/edc_reference.py), resamples are
paired and stable, units keep whole clusters, the percentile interval.

Tolerances: fiqa FNMR/pAUC 1e-12 (integer counts → float64 ratios on both sides); iso pAUC
1e-12 (float64 sums in another order).
"""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.metrics import bootstrap, edc
from exfiqa_jax.testing.edc_reference import (boot_data, ref_fiqa, ref_iso, ref_step_pauc,
                                              ref_trapezoid, tied_score_data)

BOOT_FMRS = (1e-1, 1e-2)


def test_pauc_ci_deterministic_and_brackets():
  # the shapes of the bootstrap tests below (one compile): 360 pairs, 2 sets, 2 FMRs, batch 3
  scores, gen, q, _ = boot_data(9, tied=False, tied_scores=False)
  a = bootstrap.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=16, seed=3, resample_batch=3)
  b = bootstrap.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=16, seed=3, resample_batch=3)
  c = bootstrap.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=16, seed=4, resample_batch=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[1], c[1])
  point, low, high = a
  assert point.shape == low.shape == (2, 2)
  assert np.all(low < high) and np.all(low <= point * 1.5) and np.all(high >= point / 1.5)
  np.testing.assert_allclose(point, edc.pauc(edc.edc_fnmr(scores, gen, q, fmrs=BOOT_FMRS),
                                             edc.FIQA_DISCARD, 0.3))


def ref_multiplicities(draws, units, p):
  """Literal rule: a pair inside one unit once per drawn copy of it, a pair across two units
  once per (copy of a, copy of b); pairs as units: how often each pair was drawn."""
  if units is None:
    return np.array([np.sum(draws == i) for i in range(p)])
  labels = sorted(set(np.asarray(units).reshape(-1).tolist()))
  drawn = [labels[d] for d in draws]
  out = []
  for a, b in np.asarray(units).reshape(p, -1)[:, [0, -1]]:
    out.append(drawn.count(a) if a == b else drawn.count(a) * drawn.count(b))
  return np.array(out)


@pytest.mark.parametrize("mode,unit,seed", [("fiqa", "pair", 0), ("fiqa", "identity", 1),
                                             ("fiqa", "template", 2), ("iso", "pair", 3),
                                             ("iso", "identity", 4)])
def test_bootstrap_equals_plain_numpy_bootstrap(mode, unit, seed):
  """Tolerance: fiqa FNMR/pAUC 1e-12 (integer counts → float64 ratios on both sides); iso pAUC
  1e-12 (float64 sums in another order)."""
  scores, gen, q, ids = boot_data(seed)
  p = len(scores)
  units = {"pair": None, "identity": ids,
           "template": np.random.default_rng(seed).integers(0, 60, (p, 2))}[unit]
  limit = 0.3 if mode == "fiqa" else 0.2
  n_boot = 3
  res = bootstrap.bootstrap(scores, gen, q, fmrs=BOOT_FMRS, mode=mode, limit=limit,
                      num_resamples=n_boot, seed=seed, units=units)
  assert res.samples.shape == (n_boot, 2, 2) and res.fnmr.shape == (n_boot, 2, 2, 20)
  n_units = p if units is None else len(np.unique(units))
  for b in range(n_boot):
    draws = bootstrap.resample_draws(seed, b, n_units)
    w = ref_multiplicities(draws, units, p)
    np.testing.assert_array_equal(bootstrap.resample_weights(seed, b, p, units), w)
    idx = np.repeat(np.arange(p), w)
    for s in range(2):
      for f, fmr in enumerate(BOOT_FMRS):
        if mode == "fiqa":
          want, _ = ref_fiqa(scores[idx], gen[idx], q[s, idx], fmr, edc.FIQA_DISCARD)
          area = ref_trapezoid(edc.FIQA_DISCARD[:7], want[:7])
        else:
          want, _, _, (cx, cy) = ref_iso(scores[idx], gen[idx], q[s, idx], fmr, edc.FIQA_DISCARD)
          area = ref_step_pauc(cx, cy, limit)
        np.testing.assert_allclose(res.fnmr[b, s, f], want, rtol=0, atol=1e-12)
        assert res.samples[b, s, f] == pytest.approx(area, abs=1e-12)
  np.testing.assert_array_equal(res.pauc, edc.edc_curves(scores, gen, q, BOOT_FMRS, mode=mode,
                                                         pauc_limit=limit).pauc)


def test_unit_resampling_keeps_whole_units():
  scores, gen, q, ids = boot_data(5)
  p = len(scores)
  for b in range(4):
    draws = bootstrap.resample_draws(7, b, len(np.unique(ids)))
    counts = np.bincount(draws, minlength=24)
    w = bootstrap.resample_weights(7, b, p, ids)
    # a drawn identity brings all of its pairs; an identity not drawn takes every pair with it
    for i in range(p):
      a, c = ids[i]
      assert w[i] == (counts[a] if a == c else counts[a] * counts[c])
    assert np.all(w[np.isin(ids[:, 0], np.flatnonzero(counts == 0))] == 0)
    same = ids[:, 0] == ids[:, 1]
    for u in np.flatnonzero(counts):
      assert np.all(w[same & (ids[:, 0] == u)] == counts[u])
  # one unit per pair, labelled 0..P-1, is the pair bootstrap itself
  np.testing.assert_array_equal(bootstrap.resample_weights(3, 0, p, np.arange(p)),
                                bootstrap.resample_weights(3, 0, p))
  a = bootstrap.bootstrap(scores, gen, q, BOOT_FMRS, num_resamples=2, seed=3)
  c = bootstrap.bootstrap(scores, gen, q, BOOT_FMRS, num_resamples=2, seed=3, units=np.arange(p))
  np.testing.assert_array_equal(a.samples, c.samples)


def test_bootstrap_resamples_are_paired_and_stable():
  """Resample b is the same whatever the column set and resample count (paired differences)."""
  scores, gen, q, _ = boot_data(6)
  three = bootstrap.bootstrap(scores, gen, q, BOOT_FMRS, num_resamples=3, seed=11, resample_batch=2)
  two = bootstrap.bootstrap(scores, gen, q[::-1], BOOT_FMRS, num_resamples=2, seed=11,
                      resample_batch=2)
  np.testing.assert_array_equal(three.samples[:2, ::-1], two.samples)


@pytest.mark.parametrize("kw,match", [({"alpha": 2}, "alpha"), ({"alpha": 0}, "alpha"),
                                      ({"alpha": "x"}, "alpha"), ({"num_resamples": -1}, "whole"),
                                      ({"num_resamples": 2.5}, "whole"),
                                      ({"units": np.zeros((5, 2))}, "units")])
def test_pauc_ci_bad_arguments(kw, match):
  scores, gen, q, _ = boot_data(7)
  with pytest.raises(ValueError, match=match):
    bootstrap.pauc_ci(scores, gen, q, BOOT_FMRS, **kw)


def test_pauc_ci_zero_resamples():
  scores, gen, q, _ = boot_data(8)
  point, low, high = bootstrap.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=0)
  assert np.all(np.isnan(low)) and np.all(np.isnan(high)) and np.all(np.isfinite(point))


def test_a_given_score_order_gives_the_same_resamples():
  """The pipeline sorts the comparison scores once per stage and passes the order
  (score_perm) to every column group's bootstrap: same numbers as sorting each call."""
  s, g, q = tied_score_data(5)
  perm = edc.score_order(s, g)
  for mode in ("fiqa", "iso"):
    ba = bootstrap.bootstrap(s, g, q, (1e-2,), mode=mode, num_resamples=4, seed=1)
    bb = bootstrap.bootstrap(s, g, q, (1e-2,), mode=mode, num_resamples=4, seed=1,
                             score_perm=perm)
    np.testing.assert_array_equal(ba.fnmr, bb.fnmr)
    np.testing.assert_array_equal(ba.samples, bb.samples)
  with pytest.raises(ValueError, match="score_perm has shape"):
    bootstrap.bootstrap(s, g, q, mode="iso", num_resamples=1, score_perm=perm[:-1])


def test_percentile_ci_equals_numpy_on_the_finite_samples():
  """NaN samples are left out per column; a column with none left, or no samples, gives NaN."""
  rng = np.random.default_rng(0)
  x = rng.random((41, 3))
  x[[2, 7], 0] = np.nan
  x[:, 2] = np.nan
  low, high = bootstrap.percentile_ci(x, 0.1)
  for j in range(2):
    v = x[:, j][np.isfinite(x[:, j])]
    assert (low[j], high[j]) == (np.percentile(v, 5), np.percentile(v, 95))
  assert np.isnan(low[2]) and np.isnan(high[2])
  low, high = bootstrap.percentile_ci(np.zeros((0, 3)))
  assert low.shape == (3,) and np.all(np.isnan(low)) and np.all(np.isnan(high))
  with pytest.raises(ValueError, match="alpha"):
    bootstrap.percentile_ci(x, 1.0)
