"""Deployment calibration (exfiqa_jax/calibrate/calibration.py) against plain definitions: the
threshold pickers, the 0–100 mapping, the cascade simulation and its calibration. Score matrices
only (no model), so everything here takes seconds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from exfiqa_jax.calibrate import calibration


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


def _exit_matrix(n, depth=4, seed=0):
  """Exit scores that get more informative with depth (like EX-FIQA's)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=n)
  return np.stack([z * (0.4 + 0.3 * l) + rng.normal(size=n) for l in range(depth)],
                  1).astype(np.float32)


# ------------------------------------------------------------------------------------------
def test_discard_threshold_hits_its_fraction():
  q = np.random.default_rng(1).normal(size=997).astype(np.float32)
  for f in (0.0, 0.05, 0.2, 1 / 3, 0.9):
    pick = calibration.discard_threshold(q, f, resamples=50, seed=3)
    k = int(np.float64(f) * q.size)
    assert np.mean(q < pick.threshold) == pick.achieved == k / q.size
    assert abs(pick.achieved - f) < 1 / q.size
    assert pick.ci_low <= pick.threshold <= pick.ci_high
    assert pick.threshold in q                      # an observed value: exact in float32
  again = calibration.discard_threshold(q, 0.2, resamples=50, seed=3)
  assert again == calibration.discard_threshold(q, 0.2, resamples=50, seed=3)   # seeded
  tied = np.repeat(np.arange(10, dtype=np.float32), 10)
  assert calibration.discard_threshold(tied, 0.25, resamples=0).achieved == 0.2   # whole ties kept


def test_fnmr_threshold_reaches_target_vs_plain_numpy():
  scores, gen, q = _pairs()
  grid = calibration.fnmr_grid(0.02, 0.6)
  plain = np.array([_plain_fiqa_fnmr(scores, gen, q, 1e-2, r) for r in grid])
  target = float((plain[0] + plain.min()) / 2)
  pick = calibration.fnmr_threshold(scores, gen, q, target, fmr=1e-2, grid=grid, resamples=3)
  assert pick.reached
  r = int(np.flatnonzero(np.isclose(grid, pick.discard, atol=1 / len(q)))[0])
  assert plain[r] <= target and np.all(plain[:r] > target)          # the smallest such level
  assert pick.achieved == pytest.approx(plain[r], abs=1e-12)
  cut = int(np.float64(grid[r]) * len(q))
  assert pick.threshold == np.sort(q, kind="stable")[cut]
  assert np.isfinite(pick.ci_low) and pick.ci_low <= pick.ci_high
  never = calibration.fnmr_threshold(scores, gen, q, -1.0, fmr=1e-2, grid=grid, resamples=0)
  assert not never.reached and math.isnan(never.threshold)


# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", calibration.MAPPING_KINDS)
def test_mapping_is_monotone_and_round_trips(kind, tmp_path):
  rng = np.random.default_rng(2)
  ref = {"exit_1": np.round(rng.normal(size=400), 2),          # ties
         "exit_2": rng.gamma(2.0, size=400)}
  mapping = calibration.fit_mapping(ref, kind=kind)
  for name, raw in ref.items():
    m = mapping.columns[name]
    lo, hi = (min(m.x), max(m.x)) if kind == "quantile" else (raw.min(), raw.max())
    x = np.sort(rng.uniform(lo, hi, 300))
    y = m(x)
    assert np.all(np.diff(y) > 0) and np.all((y >= 0) & (y <= 100))    # strictly monotone
    np.testing.assert_allclose(m.inverse(y), x, rtol=1e-9, atol=1e-9 * (hi - lo))
    yy = rng.uniform(0, 100, 300) if kind == "quantile" else rng.uniform(1, 99, 300)
    np.testing.assert_allclose(m(m.inverse(yy)), yy, atol=1e-8)
    if kind == "quantile":       # clipped outside the reference range, ~percentile inside
      assert m(lo - 1) == 0 and m(hi + 1) == 100
      mid_rank = np.mean(raw[:, None] < raw[None], 0) + np.mean(raw[:, None] == raw[None], 0) / 2
      assert np.abs(m(raw) - 100 * mid_rank).max() < 3
  path = calibration.save_mapping(tmp_path, mapping)
  assert path.endswith(calibration.MAPPING_FILE)
  back = calibration.load_mapping(tmp_path)
  assert back.to_dict() == mapping.to_dict()
  out = back.apply({"exit_1": ref["exit_1"][:5]})
  assert list(out) == ["q100_exit_1"]
  assert calibration.load_mapping(tmp_path / "nothing") is None


def test_mapping_of_a_score_dict_skips_fusions_of_a_truncated_program():
  s = _exit_matrix(200, 3)
  scores = {"exit_scores": s, "ex_fiqa_f": s.mean(1), "ex_fiqa_fw": s @ np.array([1, 2, 3.]) / 6}
  mapping = calibration.fit_mapping(scores)
  assert list(mapping.apply(scores)) == ["q100_exit_1", "q100_exit_2", "q100_exit_3",
                                         "q100_ex_fiqa_f", "q100_ex_fiqa_fw"]
  truncated = {"exit_scores": s[:, :2], "ex_fiqa_f": s[:, :2].mean(1), "ex_fiqa_fw": s[:, 1]}
  assert list(mapping.apply(truncated)) == ["q100_exit_1", "q100_exit_2"]


# ------------------------------------------------------------------------------------------
def _plain_cascade(s, exits, reject, accept, tau):
  """The cascade rule image by image."""
  n = s.shape[0]
  out_exit, out_acc = np.zeros(n, int), np.zeros(n, bool)
  for i in range(n):
    for j, e in enumerate(exits):
      v = np.float32(s[i, e - 1])
      if j == len(exits) - 1:
        out_exit[i], out_acc[i] = e, v >= np.float32(tau)
        break
      if v > np.float32(accept[j]):
        out_exit[i], out_acc[i] = e, True
        break
      if v < np.float32(reject[j]):
        out_exit[i], out_acc[i] = e, False
        break
  return out_exit, out_acc


def test_simulated_cascade_equals_a_plain_loop():
  rng = np.random.default_rng(4)
  s = _exit_matrix(300, 6, seed=4)
  for _ in range(5):
    exits = tuple(sorted(rng.choice(np.arange(1, 6), rng.integers(0, 4), replace=False))) + (6,)
    reject, accept = [], []
    for _ in exits[:-1]:
      a, b = np.sort(rng.normal(size=2) * 1.5)
      reject.append(-math.inf if rng.random() < 0.2 else float(a))
      accept.append(math.inf if rng.random() < 0.2 else float(b))
    tau = float(rng.normal())
    out = calibration.simulate_cascade(s, exits, reject, accept, tau)
    e, acc = _plain_cascade(s, exits, reject, accept, tau)
    np.testing.assert_array_equal(out.exit, e)
    np.testing.assert_array_equal(out.accept, acc)
    np.testing.assert_array_equal(out.score, s[np.arange(300), e - 1])
    assert out.fraction_per_exit().sum() == pytest.approx(1.0)
  full = calibration.simulate_cascade(s, (2, 4, 6), [-math.inf] * 2, [math.inf] * 2, 0.1)
  assert full.agreement == 1.0 and np.all(full.exit == 6)


def test_cascade_calibration_meets_its_target_and_reports_held_out():
  from exfiqa_jax.models import exits as exits_lib
  s = _exit_matrix(4000, 4, seed=5)
  cal, held = s[:2000], s[2000:]
  tau = calibration.discard_threshold(cal[:, -1], 0.2, resamples=0).threshold
  head = 0.05

  def costs(ex):
    return np.array([0.1 + e + head * (i + 1) for i, e in enumerate(ex)])

  saved = []
  for target in (0.9, 0.95, 0.99, 0.999):
    c = calibration.calibrate_cascade(cal, (1, 2, 3, 4), tau, target, costs=costs)
    assert c.agreement >= target and c.disagreements <= c.budget
    exits_lib.CascadeThresholds(**c.thresholds())            # valid for the engine
    again = calibration.simulate_cascade(cal, c.exits, c.reject, c.accept, tau)
    assert again.agreement == c.agreement
    assert again.mean_cost(costs(c.exits)) == pytest.approx(c.mean_gflops)
    held_out = calibration.simulate_cascade(held, c.exits, c.reject, c.accept, tau)
    assert held_out.agreement > target - 0.03                # reported, close to the target
    saved.append(c.saved)
  assert saved[0] > 0.3 and saved == sorted(saved, reverse=True)   # looser target, more saved
  fixed = calibration.calibrate_cascade(cal, (2, 4), tau, 0.95, costs=[2.0, 4.0],
                                        prune_exits=False)
  assert fixed.exits == (2, 4) and fixed.agreement >= 0.95


def test_robust_cascade_generalises_over_identities():
  def world(n_id, seed):       # early exits carry an identity bias the last exit does not
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(n_id), 10)
    b, z = rng.normal(size=n_id)[ids], rng.normal(size=ids.size)
    s = np.stack([z + 0.8 * b + 0.5 * rng.normal(size=ids.size),
                  z + 0.4 * b + 0.3 * rng.normal(size=ids.size),
                  z + 0.1 * rng.normal(size=ids.size)], 1).astype(np.float32)
    return s, ids

  def costs(ex):
    return np.array([0.1 + e + 0.05 * (i + 1) for i, e in enumerate(ex)])

  plain_held, robust_held = [], []
  for seed in range(3):
    cal, groups = world(50, seed)
    held, _ = world(200, 100 + seed)
    tau = calibration.discard_threshold(cal[:, -1], 0.2, resamples=0).threshold
    plain = calibration.calibrate_cascade(cal, (1, 2, 3), tau, 0.99, costs=costs)
    robust = calibration.robust_cascade(cal, (1, 2, 3), tau, 0.99, costs=costs, groups=groups)
    r = robust.calibration
    assert r.agreement >= 0.99 and robust.cv_agreement >= 0.99 and r.saved <= plain.saved
    assert robust.internal_target >= 0.99 and robust.tried[-1][:2] == (robust.internal_target,
                                                                        robust.margin)
    plain_held.append(calibration.simulate_cascade(held, plain.exits, plain.reject, plain.accept,
                                                   tau).agreement)
    robust_held.append(calibration.simulate_cascade(held, r.exits, r.reject, r.accept,
                                                    tau).agreement)
  assert np.mean(robust_held) > np.mean(plain_held) and np.mean(robust_held) > 0.985
