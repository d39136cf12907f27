"""EDC engine vs a plain NumPy reference written here from docs/evaluation.md (loops, float64).

Tolerances: FNMR values are ratios of integer counts computed in float64 on both sides → 1e-12.
pAUC → 1e-12 (float64 sums in a different order). Scores are float32 values on both sides.
"""
from __future__ import annotations

import numpy as np
import pytest

import jax
from exfiqa_jax.metrics import comparisons, edc


# ------------------------------------------------------------------------------------------
# NumPy reference (docs/evaluation.md§6 fiqa, §5.2/§6 iso, §7 areas): slow and literal
# ------------------------------------------------------------------------------------------
def ref_fiqa(scores, gen, q, fmr, discard):
  """CR-FIQA getFNMRFixedTH + calculate_roc + get_fmr_op, with a stable sort. Returns fnmr, thr."""
  n = len(scores)
  order = np.argsort(q, kind="stable")
  fnmrs, thrs = [], []
  for r in discard:
    keep = order[int(r * n):]
    s, g = scores[keep].astype(np.float64), gen[keep]
    gs, im = s[g], s[~g]
    u = np.unique(np.concatenate([gs, im]))                 # every distinct observed value
    fm = (len(im) - np.searchsorted(np.sort(im), u, side="left")).astype(np.float64)  # #{imp >= u}
    with np.errstate(invalid="ignore", divide="ignore"):
      k = int(np.argmin(np.abs(fm / len(im) - fmr)))        # first on ties
    thr = u[k]
    fnmrs.append(1 - np.sum(gs > thr) / len(gs))
    thrs.append(thr)
  return np.array(fnmrs), np.array(thrs)


def ref_iso(scores, gen, q, fmr, discard):
  """Fixed threshold from all impostors, genuine only, whole tie groups. fnmr, done, step curve."""
  im = np.sort(scores[~gen].astype(np.float64))[::-1]
  k = int(np.floor(fmr * len(im)))
  t = np.nextafter(np.float32(im[k]), np.float32(np.inf))
  assert np.sum(im >= t) / len(im) <= fmr and np.sum(im >= im[k]) / len(im) > fmr
  gs, gq = scores[gen], q[gen]
  o = np.argsort(gq, kind="stable")
  gs, gq = gs[o], gq[o]
  n = len(gs)
  starts = [0] + [i for i in range(1, n) if gq[i] != gq[i - 1]]
  curve_x = [d / n for d in starts]
  curve_y = [np.sum(gs[d:] < t) / (n - d) for d in starts]
  fnmr, done = [], []
  for r in discard:
    d = max(x for x in starts if x <= r * n)
    fnmr.append(np.sum(gs[d:] < t) / (n - d))
    done.append(d / n)
  return np.array(fnmr), np.array(done), t, (curve_x + [1.0], curve_y + [0.0])


def ref_step_pauc(xs, ys, limit):
  """Schlett compute_edc_pauc, literally."""
  if limit == 0:
    return 0.0
  area = 0.0
  for i in range(len(xs)):
    if i == len(xs) - 1 or xs[i + 1] >= limit:
      area += ys[i] * (limit - xs[i])
      break
    area += ys[i] * (xs[i + 1] - xs[i])
  return area


def ref_trapezoid(x, y):
  return float(sum((x[i + 1] - x[i]) * (y[i + 1] + y[i]) / 2 for i in range(len(x) - 1)))


# ------------------------------------------------------------------------------------------
def make_data(seed, p=3000, gen_frac=0.3, n_sets=3, tied=False, tied_scores=False):
  rng = np.random.default_rng(seed)
  gen = rng.random(p) < gen_frac
  return _scores_and_quality(rng, gen, n_sets, tied, tied_scores)


def _scores_and_quality(rng, gen, n_sets, tied, tied_scores):
  """(scores, gen, quality [S, P]): genuine scores high, quality correlated with the score."""
  p = len(gen)
  latent = rng.standard_normal(p)
  scores = np.where(gen, 0.5 + 0.25 * rng.standard_normal(p) + 0.1 * latent,
                    0.05 * rng.standard_normal(p)).astype(np.float32)
  if tied_scores:
    scores = (np.round(scores * 40) / 40).astype(np.float32)
  q = latent[None] + rng.standard_normal((n_sets, p))
  if tied:
    q = np.round(q * 2) / 2                                 # ~15 distinct values
  return scores, gen, q.astype(np.float32)


FMRS = (1e-2, 1e-3, 1e-4)


@pytest.mark.parametrize("tied,tied_scores,seed", [(False, False, 0), (True, False, 1),
                                                    (True, True, 2), (False, True, 3)])
def test_fiqa_matches_reference(tied, tied_scores, seed):
  scores, gen, q = make_data(seed, tied=tied, tied_scores=tied_scores)
  res = edc.edc_curves(scores, gen, q, fmrs=FMRS, mode="fiqa")
  assert res.fnmr.shape == (3, 3, 20)
  for s in range(q.shape[0]):
    for f, fmr in enumerate(FMRS):
      want, thr = ref_fiqa(scores, gen, q[s], fmr, edc.FIQA_DISCARD)
      np.testing.assert_allclose(res.fnmr[s, f], want, rtol=0, atol=1e-12)
      np.testing.assert_array_equal(res.threshold[s, f], thr)
    order = np.argsort(q[s], kind="stable")
    for r, d in enumerate(edc.FIQA_DISCARD):
      keep = order[int(d * len(scores)):]
      assert res.n_genuine[s, r] == gen[keep].sum()
      assert res.n_impostor[s, r] == (~gen[keep]).sum()
  np.testing.assert_array_equal(edc.edc_fnmr(scores, gen, q, fmrs=FMRS), res.fnmr)


def test_fiqa_half_integer_target_ties():
  """f·N_imp = x.5 exactly in decimal: the float64 choice of the published code is reproduced."""
  rng = np.random.default_rng(7)
  n_imp, n_gen = 1050, 300                                   # 1e-2·1050 = 10.5
  scores = np.concatenate([rng.standard_normal(n_imp) * 0.1, 0.3 + rng.standard_normal(n_gen) * 0.2])
  gen = np.arange(n_imp + n_gen) >= n_imp
  q = rng.random((2, n_imp + n_gen)).astype(np.float32)
  q[:, :] = np.where(np.arange(n_imp + n_gen) % 3 == 0, 5.0, q)  # only discard level 0 matters most
  res = edc.edc_curves(scores.astype(np.float32), gen, q, fmrs=(1e-2,), discard=[0.0, 0.1])
  for s in range(2):
    want, _ = ref_fiqa(scores.astype(np.float32), gen, q[s], 1e-2, [0.0, 0.1])
    np.testing.assert_allclose(res.fnmr[s, 0], want, rtol=0, atol=1e-12)


def test_fiqa_uncertainty_and_unsorted_grid():
  scores, gen, q = make_data(4, tied=True, n_sets=2)
  grid = np.array([0.3, 0.0, 0.55, 0.1])
  res = edc.edc_curves(scores, gen, q, fmrs=(1e-2,), discard=grid, higher_is_better=False)
  for s in range(2):
    want, _ = ref_fiqa(scores, gen, -q[s], 1e-2, grid)
    np.testing.assert_allclose(res.fnmr[s, 0], want, rtol=0, atol=1e-12)
  np.testing.assert_allclose(res.discarded[0], np.floor(grid * len(scores)) / len(scores))


@pytest.mark.parametrize("tied,seed", [(False, 5), (True, 6)])
def test_iso_matches_reference(tied, seed):
  scores, gen, q = make_data(seed, tied=tied)
  limit = 0.2
  res = edc.edc_curves(scores, gen, q, fmrs=FMRS, mode="iso", pauc_limit=limit)
  for s in range(q.shape[0]):
    for f, fmr in enumerate(FMRS):
      want, done, t, (cx, cy) = ref_iso(scores, gen, q[s], fmr, edc.FIQA_DISCARD)
      np.testing.assert_allclose(res.fnmr[s, f], want, rtol=0, atol=1e-12)
      np.testing.assert_allclose(res.discarded[s], done, rtol=0, atol=1e-12)
      assert np.all(res.threshold[s, f] == t)
      np.testing.assert_allclose(res.pauc[s, f], ref_step_pauc(cx, cy, limit), rtol=0, atol=1e-12)
  assert np.all(res.n_impostor == (~gen).sum())
  best = edc.edc_curves(scores, gen, q, fmrs=FMRS, mode="iso", pauc_limit=limit, subtract_best=True)
  e0 = res.fnmr[..., 0]
  np.testing.assert_allclose(best.pauc, res.pauc - (e0 ** 2 / 2 - np.maximum(0, e0 - limit) ** 2 / 2),
                             atol=1e-12)


def test_traced_path_under_jit():
  """The same kernels under jit (device-side decision) agree on ordinary data."""
  scores, gen, q = make_data(8, p=1500)
  want = edc.edc_curves(scores, gen, q, fmrs=(1e-2,))
  got = jax.jit(lambda s, g, x: edc.edc_fnmr(s, g, x, fmrs=(1e-2,)))(scores, gen, q)
  np.testing.assert_allclose(np.asarray(got), want.fnmr, atol=1e-6)
  want_iso = edc.edc_curves(scores, gen, q, fmrs=(1e-2,), mode="iso")
  got_iso = jax.jit(lambda s, g, x: edc.edc_fnmr(s, g, x, fmrs=(1e-2,), mode="iso"))(scores, gen, q)
  np.testing.assert_allclose(np.asarray(got_iso), want_iso.fnmr, atol=1e-6)


# ------------------------------------------------------------------------------------------
def test_pauc_hand_made_curves():
  grid = edc.FIQA_DISCARD
  y = np.linspace(0.1, 0.005, 20)[None, None]
  # trapezoid over the 7 points 0..0.30000000000000004 (the paper's r = arange(0, 0.32, 0.05))
  want = ref_trapezoid(grid[:7], y[0, 0, :7])
  np.testing.assert_allclose(edc.pauc(y, grid, 0.3), [[want]], rtol=0, atol=1e-15)
  # constant curve: area = value x limit; interpolation to a limit between grid points
  c = np.full((1, 20), 0.02)
  np.testing.assert_allclose(edc.pauc(c, grid, 0.95), [0.02 * 0.95], atol=1e-15)
  np.testing.assert_allclose(edc.pauc(c, grid, 0.33), [0.02 * 0.33], atol=1e-15)
  lin = grid[None] * 2.0                                     # y = 2x, exact under trapezoid
  np.testing.assert_allclose(edc.pauc(lin, grid, 0.33), [0.33 ** 2], atol=1e-15)
  # iso stepwise: steps (0, .1), (.25, .05), (1, 0); limit .2 and .5
  x = np.array([0.0, 0.25]); e = np.array([0.1, 0.05])
  assert edc.pauc(e, x, 0.2, mode="iso") == pytest.approx(0.1 * 0.2, abs=1e-15)
  assert edc.pauc(e, x, 0.5, mode="iso") == pytest.approx(0.1 * 0.25 + 0.05 * 0.25, abs=1e-15)
  assert edc.pauc(e, x, 0.5, mode="iso", subtract_best=True) == pytest.approx(
      0.1 * 0.25 + 0.05 * 0.25 - 0.1 ** 2 / 2, abs=1e-15)


def test_pauc_ci_deterministic_and_brackets():
  # the shapes of the bootstrap tests below (one compile): 360 pairs, 2 sets, 2 FMRs, batch 3
  scores, gen, q, _ = boot_data(9, tied=False, tied_scores=False)
  a = edc.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=16, seed=3, resample_batch=3)
  b = edc.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=16, seed=3, resample_batch=3)
  c = edc.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=16, seed=4, resample_batch=3)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[1], c[1])
  point, low, high = a
  assert point.shape == low.shape == (2, 2)
  assert np.all(low < high) and np.all(low <= point * 1.5) and np.all(high >= point / 1.5)
  np.testing.assert_allclose(point, edc.pauc(edc.edc_fnmr(scores, gen, q, fmrs=BOOT_FMRS),
                                             edc.FIQA_DISCARD, 0.3))


def test_resampled_copy_semantics():
  """Duplicated pairs (what a bootstrap resample is) are handled like any other pairs."""
  scores, gen, q = make_data(10, p=800, n_sets=1, tied=True)
  rng = np.random.default_rng(0)
  idx = np.sort(rng.integers(0, 800, 800))
  res = edc.edc_fnmr(scores[idx], gen[idx], q[:, idx], fmrs=(1e-2,))
  want, _ = ref_fiqa(scores[idx], gen[idx], q[0, idx], 1e-2, edc.FIQA_DISCARD)
  np.testing.assert_allclose(res[0, 0], want, atol=1e-12)


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case,match", [
    ("nan_score", "scores contain"), ("inf_quality", "pair_quality contains"),
    ("lengths", "mismatched lengths"), ("no_gen", "no genuine"), ("no_imp", "no impostor"),
    ("discard_1", r"\[0, 1\)"), ("discard_neg", r"\[0, 1\)"), ("fmr", "fmrs"), ("mode", "mode")])
def test_bad_input(case, match):
  scores, gen, q = make_data(11, p=200, n_sets=1)
  kw = {}
  if case == "nan_score":
    scores = scores.copy(); scores[3] = np.nan
  elif case == "inf_quality":
    q = q.copy(); q[0, 5] = np.inf
  elif case == "lengths":
    q = q[:, :-1]
  elif case == "no_gen":
    gen = np.zeros_like(gen)
  elif case == "no_imp":
    gen = np.ones_like(gen)
  elif case == "discard_1":
    kw["discard"] = [0.0, 0.5, 1.0]
  elif case == "discard_neg":
    kw["discard"] = [-0.1, 0.5]
  elif case == "fmr":
    kw["fmrs"] = (0.0,)
  elif case == "mode":
    kw["mode"] = "both"
  with pytest.raises(ValueError, match=match):
    edc.edc_fnmr(scores, gen, q, **kw)


# ------------------------------------------------------------------------------------------
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


def test_rows_for_report():
  scores, gen, q = make_data(12)
  res = edc.edc_curves(scores, gen, q, fmrs=FMRS)
  rows = res.rows("lfw", "arcface", ["exit_1", "exit_2", "ex_fiqa_fw"])
  assert len(rows) == 3 * 3 * 20
  assert set(rows[0]) == {"benchmark", "fr_model", "quality", "fmr", "discard", "fnmr",
                          "threshold", "n_genuine", "n_impostor"}
  assert rows[-1]["quality"] == "ex_fiqa_fw" and rows[-1]["discard"] == edc.FIQA_DISCARD[-1]
  assert rows[-1]["fnmr"] == res.fnmr[2, 2, 19] and rows[-1]["n_genuine"] == res.n_genuine[2, 19]


# ------------------------------------------------------------------------------------------
# Bootstrap: every resample equals the plain EDC of its resampled pair list (NumPy reference)
# ------------------------------------------------------------------------------------------
def boot_data(seed, p=360, n_gen=120, n_sets=2, tied=True, tied_scores=True, n_ids=24):
  """Fixed genuine count (one compile for every seed); identities per image side."""
  rng = np.random.default_rng(seed)
  gen = np.zeros(p, bool)
  gen[rng.choice(p, n_gen, replace=False)] = True
  ids = rng.integers(0, n_ids, (p, 2))
  ids[gen, 1] = ids[gen, 0]                                  # a genuine pair: one identity
  ids[~gen, 1] = (ids[~gen, 0] + 1 + rng.integers(0, n_ids - 1, (~gen).sum())) % n_ids
  return (*_scores_and_quality(rng, gen, n_sets, tied, tied_scores), ids)


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


BOOT_FMRS = (1e-1, 1e-2)


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
  res = edc.bootstrap(scores, gen, q, fmrs=BOOT_FMRS, mode=mode, limit=limit,
                      num_resamples=n_boot, seed=seed, units=units)
  assert res.samples.shape == (n_boot, 2, 2) and res.fnmr.shape == (n_boot, 2, 2, 20)
  n_units = p if units is None else len(np.unique(units))
  for b in range(n_boot):
    draws = edc.resample_draws(seed, b, n_units)
    w = ref_multiplicities(draws, units, p)
    np.testing.assert_array_equal(edc.resample_weights(seed, b, p, units), w)
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
    draws = edc.resample_draws(7, b, len(np.unique(ids)))
    counts = np.bincount(draws, minlength=24)
    w = edc.resample_weights(7, b, p, ids)
    # a drawn identity brings all of its pairs; an identity not drawn takes every pair with it
    for i in range(p):
      a, c = ids[i]
      assert w[i] == (counts[a] if a == c else counts[a] * counts[c])
    assert np.all(w[np.isin(ids[:, 0], np.flatnonzero(counts == 0))] == 0)
    same = ids[:, 0] == ids[:, 1]
    for u in np.flatnonzero(counts):
      assert np.all(w[same & (ids[:, 0] == u)] == counts[u])
  # one unit per pair, labelled 0..P-1, is the pair bootstrap itself
  np.testing.assert_array_equal(edc.resample_weights(3, 0, p, np.arange(p)),
                                edc.resample_weights(3, 0, p))
  a = edc.bootstrap(scores, gen, q, BOOT_FMRS, num_resamples=2, seed=3)
  c = edc.bootstrap(scores, gen, q, BOOT_FMRS, num_resamples=2, seed=3, units=np.arange(p))
  np.testing.assert_array_equal(a.samples, c.samples)


def test_bootstrap_resamples_are_paired_and_stable():
  """Resample b is the same whatever the column set and resample count (paired differences)."""
  scores, gen, q, _ = boot_data(6)
  three = edc.bootstrap(scores, gen, q, BOOT_FMRS, num_resamples=3, seed=11, resample_batch=2)
  two = edc.bootstrap(scores, gen, q[::-1], BOOT_FMRS, num_resamples=2, seed=11,
                      resample_batch=2)
  np.testing.assert_array_equal(three.samples[:2, ::-1], two.samples)


@pytest.mark.parametrize("kw,match", [({"alpha": 2}, "alpha"), ({"alpha": 0}, "alpha"),
                                      ({"alpha": "x"}, "alpha"), ({"num_resamples": -1}, "whole"),
                                      ({"num_resamples": 2.5}, "whole"),
                                      ({"units": np.zeros((5, 2))}, "units")])
def test_pauc_ci_bad_arguments(kw, match):
  scores, gen, q, _ = boot_data(7)
  with pytest.raises(ValueError, match=match):
    edc.pauc_ci(scores, gen, q, BOOT_FMRS, **kw)


def test_pauc_ci_zero_resamples():
  scores, gen, q, _ = boot_data(8)
  point, low, high = edc.pauc_ci(scores, gen, q, BOOT_FMRS, num_resamples=0)
  assert np.all(np.isnan(low)) and np.all(np.isnan(high)) and np.all(np.isfinite(point))


def test_a_given_score_order_gives_the_same_curves_and_resamples():
  """The pipeline sorts the comparison scores once per stage and passes the order
  (score_perm) to every column group's EDC and bootstrap: same numbers as sorting each call."""
  rng = np.random.default_rng(5)
  p = 3000
  s = np.round(rng.standard_normal(p), 2).astype(np.float32)      # ties
  g = rng.random(p) < 0.2
  s[g] += 1.5
  q = rng.random((3, p)).astype(np.float32)
  perm = edc.score_order(s, g)
  for mode in ("fiqa", "iso"):
    a = edc.edc_curves(s, g, q, (1e-2,), mode=mode, pauc_limit=0.3)
    b = edc.edc_curves(s, g, q, (1e-2,), mode=mode, pauc_limit=0.3, score_perm=perm)
    np.testing.assert_array_equal(a.fnmr, b.fnmr)
    np.testing.assert_array_equal(a.pauc, b.pauc)
    ba = edc.bootstrap(s, g, q, (1e-2,), mode=mode, num_resamples=4, seed=1)
    bb = edc.bootstrap(s, g, q, (1e-2,), mode=mode, num_resamples=4, seed=1, score_perm=perm)
    np.testing.assert_array_equal(ba.fnmr, bb.fnmr)
    np.testing.assert_array_equal(ba.samples, bb.samples)
  with pytest.raises(ValueError, match="score_perm has shape"):
    edc.edc_curves(s, g, q, mode="fiqa", score_perm=perm[:-1])
