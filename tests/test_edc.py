"""EDC engine (exfiqa_jax/metrics/edc.py, edc_rule.py) vs the plain NumPy reference
(exfiqa_jax/testing/edc_reference.py, loops and float64, written from docs/evaluation.md).

Tolerances: FNMR values are ratios of integer counts computed in float64 on both sides → 1e-12.
pAUC → 1e-12 (float64 sums in a different order). Scores are float32 values on both sides.
The bootstrap over the same rule: tests/test_bootstrap.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import jax
from exfiqa_jax.metrics import edc, edc_rule
from exfiqa_jax.testing.edc_reference import (make_data, ref_fiqa, ref_iso, ref_step_pauc,
                                              ref_trapezoid, tied_score_data)

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


def test_resampled_copy_semantics():
  """Duplicated pairs (what a bootstrap resample is) are handled like any other pairs."""
  scores, gen, q = make_data(10, p=800, n_sets=1, tied=True)
  rng = np.random.default_rng(0)
  idx = np.sort(rng.integers(0, 800, 800))
  res = edc.edc_fnmr(scores[idx], gen[idx], q[:, idx], fmrs=(1e-2,))
  want, _ = ref_fiqa(scores[idx], gen[idx], q[0, idx], 1e-2, edc.FIQA_DISCARD)
  np.testing.assert_allclose(res[0, 0], want, atol=1e-12)


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


def test_rows_for_report():
  scores, gen, q = make_data(12)
  res = edc.edc_curves(scores, gen, q, fmrs=FMRS)
  rows = res.rows("lfw", "arcface", ["exit_1", "exit_2", "ex_fiqa_fw"])
  assert len(rows) == 3 * 3 * 20
  assert set(rows[0]) == {"benchmark", "fr_model", "quality", "fmr", "discard", "fnmr",
                          "threshold", "n_genuine", "n_impostor"}
  assert rows[-1]["quality"] == "ex_fiqa_fw" and rows[-1]["discard"] == edc.FIQA_DISCARD[-1]
  assert rows[-1]["fnmr"] == res.fnmr[2, 2, 19] and rows[-1]["n_genuine"] == res.n_genuine[2, 19]


def test_a_given_score_order_gives_the_same_curves():
  """The pipeline sorts the comparison scores once per stage and passes the order
  (score_perm) to every column group's EDC: same numbers as sorting each call (the bootstrap's
  half: tests/test_bootstrap.py)."""
  s, g, q = tied_score_data(5)
  perm = edc.score_order(s, g)
  for mode in ("fiqa", "iso"):
    a = edc.edc_curves(s, g, q, (1e-2,), mode=mode, pauc_limit=0.3)
    b = edc.edc_curves(s, g, q, (1e-2,), mode=mode, pauc_limit=0.3, score_perm=perm)
    np.testing.assert_array_equal(a.fnmr, b.fnmr)
    np.testing.assert_array_equal(a.pauc, b.pauc)
  with pytest.raises(ValueError, match="score_perm has shape"):
    edc.edc_curves(s, g, q, mode="fiqa", score_perm=perm[:-1])


# ------------------------------------------------------------------------------------------
# The rule (edc_rule.py): weights are copies, the unweighted EDC is "every weight 1"
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iso_rule_with_weights_equals_the_repeated_list(seed):
  """iso_levels and step_pauc on multiplicities w equal the same functions on the list with
  pair i repeated w_i times (weight 1 each), and the literal reference on that list."""
  rng = np.random.default_rng(seed)
  g = 60
  q = (np.round(rng.standard_normal(g) * 2) / 2).astype(np.float32)   # tie groups
  s = rng.standard_normal(g).astype(np.float32)
  w = rng.integers(0, 4, g)
  w[0] = max(w[0], 1)
  disc = edc.FIQA_DISCARD
  imp = np.float32(0.1)                       # one impostor: K = floor(0.5·1) = 0, t just above it
  thr = edc_rule.iso_threshold(imp)

  def curve(q, s, w):
    o = np.argsort(q, kind="stable")
    q, s, w = q[o], s[o], w[o]
    start = np.r_[True, q[1:] != q[:-1]]
    before = np.cumsum(w) - w
    n = int(w.sum())
    suffix = edc_rule.suffix_counts(np, ((s < thr) * w)[None, None], np.int64)  # [1, 1, G+1]
    errs, kept = edc_rule.iso_levels(np, start, before[None], edc_rule.cuts_for(disc, n)[None],
                                     suffix, np.array([n]))
    area = edc_rule.step_pauc(np, suffix, start, before[None], np.array([n]), 0.2)
    return errs[0, 0] / kept[0], area[0, 0]

  fnmr_w, area_w = curve(q, s, w)
  idx = np.repeat(np.arange(g), w)
  fnmr_1, area_1 = curve(q[idx], s[idx], np.ones(idx.size, np.int64))
  np.testing.assert_array_equal(fnmr_w, fnmr_1)
  assert area_w == area_1
  gen = np.r_[np.ones(idx.size, bool), False]
  want, _, t, (cx, cy) = ref_iso(np.r_[s[idx], imp], gen, np.r_[q[idx], 0], 0.5, disc)
  assert t == thr
  np.testing.assert_allclose(fnmr_w, want, rtol=0, atol=1e-12)
  assert area_w == pytest.approx(ref_step_pauc(cx, cy, 0.2), abs=1e-12)


def test_cuts_and_iso_rank_are_float64_on_the_host():
  """int(r·n) and floor(f·N) as Python computes them (0.3·10 = 3.0000000000000004 → 3)."""
  np.testing.assert_array_equal(edc_rule.cuts_for(edc.FIQA_DISCARD, 10),
                                [int(r * 10) for r in edc.FIQA_DISCARD])
  np.testing.assert_array_equal(edc_rule.cuts_for(np.array([0.5])[None], np.array([[3], [8]])),
                                [[1], [4]])
  np.testing.assert_array_equal(edc_rule.iso_rank((1e-2, 0.07), 1050), [10, 73])
  assert edc_rule.iso_threshold(np.float32(0.5)) == np.nextafter(np.float32(0.5), np.float32(1))
