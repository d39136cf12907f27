"""Cascade calibration (exfiqa_jax/calibrate/cascade.py): the simulation against a plain loop,
calibration meeting its target, robust_cascade generalising over identities. Score matrices only
(no model), so everything here takes seconds."""
from __future__ import annotations

import math

import numpy as np
import pytest

from exfiqa_jax.calibrate import cascade, thresholds


def _exit_matrix(n, depth=4, seed=0):
  """Exit scores that get more informative with depth (like EX-FIQA's)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=n)
  return np.stack([z * (0.4 + 0.3 * l) + rng.normal(size=n) for l in range(depth)],
                  1).astype(np.float32)



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
    out = cascade.simulate_cascade(s, exits, reject, accept, tau)
    e, acc = _plain_cascade(s, exits, reject, accept, tau)
    np.testing.assert_array_equal(out.exit, e)
    np.testing.assert_array_equal(out.accept, acc)
    np.testing.assert_array_equal(out.score, s[np.arange(300), e - 1])
    assert out.fraction_per_exit().sum() == pytest.approx(1.0)
  full = cascade.simulate_cascade(s, (2, 4, 6), [-math.inf] * 2, [math.inf] * 2, 0.1)
  assert full.agreement == 1.0 and np.all(full.exit == 6)


def test_cascade_calibration_meets_its_target_and_reports_held_out():
  from exfiqa_jax.models import exits as exits_lib
  s = _exit_matrix(4000, 4, seed=5)
  cal, held = s[:2000], s[2000:]
  tau = thresholds.discard_threshold(cal[:, -1], 0.2, resamples=0).threshold
  head = 0.05

  def costs(ex):
    return np.array([0.1 + e + head * (i + 1) for i, e in enumerate(ex)])

  saved = []
  for target in (0.9, 0.95, 0.99, 0.999):
    c = cascade.calibrate_cascade(cal, (1, 2, 3, 4), tau, target, costs=costs)
    assert c.agreement >= target and c.disagreements <= c.budget
    exits_lib.CascadeThresholds(**c.thresholds())            # valid for the engine
    again = cascade.simulate_cascade(cal, c.exits, c.reject, c.accept, tau)
    assert again.agreement == c.agreement
    assert again.mean_cost(costs(c.exits)) == pytest.approx(c.mean_gflops)
    held_out = cascade.simulate_cascade(held, c.exits, c.reject, c.accept, tau)
    assert held_out.agreement > target - 0.03                # reported, close to the target
    saved.append(c.saved)
  assert saved[0] > 0.3 and saved == sorted(saved, reverse=True)   # looser target, more saved
  fixed = cascade.calibrate_cascade(cal, (2, 4), tau, 0.95, costs=[2.0, 4.0],
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
    tau = thresholds.discard_threshold(cal[:, -1], 0.2, resamples=0).threshold
    plain = cascade.calibrate_cascade(cal, (1, 2, 3), tau, 0.99, costs=costs)
    robust = cascade.robust_cascade(cal, (1, 2, 3), tau, 0.99, costs=costs, groups=groups)
    r = robust.calibration
    assert r.agreement >= 0.99 and robust.cv_agreement >= 0.99 and r.saved <= plain.saved
    assert robust.internal_target >= 0.99 and robust.tried[-1][:2] == (robust.internal_target,
                                                                        robust.margin)
    plain_held.append(cascade.simulate_cascade(held, plain.exits, plain.reject, plain.accept,
                                                   tau).agreement)
    robust_held.append(cascade.simulate_cascade(held, r.exits, r.reject, r.accept,
                                                    tau).agreement)
  assert np.mean(robust_held) > np.mean(plain_held) and np.mean(robust_held) > 0.985


def test_robust_cascade_memo_is_keyed_on_everything_its_numbers_depend_on():
  # a memo shared between calls on other data (tau, exits, grouping, folds, seed, costs) must
  # not hand back another calibration's out-of-fold numbers (it was keyed on (target, margin))
  s = _exit_matrix(600, 4, seed=7)
  groups = np.repeat(np.arange(60), 10)
  tau = float(np.quantile(s[:, -1], 0.2))
  base = dict(exit_scores=s, exits=(1, 2, 3, 4), tau=tau, target=0.95, groups=groups)
  variants = [dict(tau=float(np.quantile(s[:, -1], 0.5))), dict(exits=(2, 4)),
              dict(groups=np.arange(600) % 7), dict(groups=None), dict(folds=3), dict(seed=1),
              dict(costs=lambda ex: np.asarray(ex, np.float64) ** 2),
              dict(exit_scores=s[::-1].copy()), dict(full_cost=8.0), dict(prune_exits=False)]
  for change in variants:
    memo = {}
    first = cascade.robust_cascade(**base, memo=memo)
    second = cascade.robust_cascade(**{**base, **change}, memo=memo)
    fresh = cascade.robust_cascade(**{**base, **change})
    assert second.to_dict() == fresh.to_dict(), change
    again = cascade.robust_cascade(**base, memo=memo)      # both stay in the memo
    assert again.to_dict() == first.to_dict()
