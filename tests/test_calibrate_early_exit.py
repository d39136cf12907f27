"""The early-exit study's numbers on score matrices (exfiqa_jax/calibrate/early_exit.py): τ, the
fixed columns and the cascade columns, without a model (the whole study runs end to end in
tests/test_tasks_early_exit.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from exfiqa_jax import quality_mapping
from exfiqa_jax.calibrate import early_exit as study


def _scores(n, depth=3, seed=0):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=n)
  return np.stack([z * (0.4 + 0.3 * l) + rng.normal(size=n) for l in range(depth)],
                  1).astype(np.float32)


def test_tau_explicit_or_by_discard():
  s = _scores(500)
  tau, info = study.pick_tau(s[:, -1], 0.2, resamples=10)
  assert info["discard_calibration"] == np.mean(s[:, -1] < np.float32(tau)) == 0.2
  assert info["rule"] == "discard" and list(info)[:2] == ["rule", "threshold"]
  assert info["ci_low"] <= tau <= info["ci_high"]
  tau, info = study.pick_tau(s[:, -1], 0.2, value=0.1)
  assert tau == float(np.float32(0.1)) and info["rule"] == "explicit"


def test_fixed_and_cascade_columns():
  s_cal, s_ev = _scores(800, seed=1), _scores(800, seed=2)
  per_exit = np.array([1.0, 2.0, 3.0])
  tau, info = study.pick_tau(s_cal[:, -1], 0.2, resamples=0)
  fused = {"ex_fiqa_f": s_cal.mean(1)}
  cols = study.fixed_columns(s_cal, s_ev, fused, {"ex_fiqa_f": s_ev.mean(1)}, per_exit, 3.1, tau,
                             info["discard_calibration"])
  rows = [r for _, r in cols]
  assert [r["method"] for r in rows] == ["exit_1", "exit_2", "exit_3", "ex_fiqa_f"]
  assert rows[2]["agreement"] == rows[2]["agreement_calibration"] == 1.0
  for q, r in cols[:2]:          # each fixed exit discards τ's share of the calibration split
    k = int(r["exits"])
    assert np.mean(s_cal[:, k - 1] < np.float32(r["threshold"])) == pytest.approx(0.2)
  mapping = quality_mapping.fit_mapping({"exit_scores": s_cal})
  costs = lambda ex: np.asarray(ex, np.float64) + 0.05
  groups = np.arange(800) // 8
  casc, records = study.cascade_columns(s_cal, s_ev, (1, 2, 3), tau, costs, 3.05, mapping.columns,
                                        (0.9, 0.99), groups)
  assert [r["method"] for _, r in casc] == [study.cascade_name(0.9), "cascade@0.99"]
  for (q, r), rec in zip(casc, records):
    assert r["agreement_calibration"] >= r["target"] and 0 <= q.min() and q.max() <= 100
    assert sum(r["decided"]) == pytest.approx(1.0)
    assert rec["evaluation"]["agreement"] == r["agreement"]
    assert rec["_thresholds"].exits == tuple(int(e) for e in r["exits"].split("+"))
  assert casc[0][1]["saved"] >= casc[1][1]["saved"]          # a looser target saves more
  for _, r in cols + casc:
    r["pauc"], r["images_per_second"] = 0.01, math.nan
  head = study.headline([r for _, r in cols + casc], 0.99, {})
  assert head["target"] == 0.99 and head["speedup"] is None and "compute saved" in head["text"]
  assert study.headline([r for _, r in cols], 0.99, {}) == {
      "text": "no cascade at agreement target 0.99"}


def test_learned_fusion_is_fitted_on_calibration_pairs_and_applied_to_both_splits():
  rng = np.random.default_rng(3)
  s_cal, s_ev = _scores(300, seed=3), _scores(200, seed=4)
  pairs = rng.integers(0, 300, (2000, 2))
  gen = rng.random(2000) < 0.3
  pq = np.minimum(s_cal[pairs[:, 0], 1], s_cal[pairs[:, 1], 1])   # exit 2 predicts the scores
  scores = np.where(gen, 0.5 + 0.2 * pq, 0.1 * rng.normal(size=2000)).astype(np.float32)
  f_cal, f_ev, info = study.learned_fusion(s_cal, pairs, scores, gen, s_ev, 1e-2, 0.3, steps=60,
                                           learning_rate=0.1, normalization="zscore")
  w = np.asarray(info["weights"])
  assert w.shape == (3,) and np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-6)
  assert info["surrogate_final"] < info["surrogate_initial"] and int(np.argmax(w)) == 1
  mean, std = s_cal.astype(np.float64).mean(0), s_cal.astype(np.float64).std(0)
  np.testing.assert_allclose(f_ev, (s_ev - mean) / std @ w, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(f_cal, (s_cal - mean) / std @ w, rtol=1e-4, atol=1e-5)


def test_cost_aware_cascade_falls_back_to_one_segment_where_every_cascade_loses():
  s_cal, s_ev = _scores(600, seed=5), _scores(600, seed=6)
  tau, _ = study.pick_tau(s_cal[:, -1], 0.2, resamples=0)
  mapping = quality_mapping.fit_mapping({"exit_scores": s_cal})
  groups = np.arange(600) // 6

  def seconds_with(embed, block):    # per image: the first segment's embedding, then per
    return lambda ex: np.cumsum([(embed if p == 0 else 1.0) + block * (e - p)   # segment a
                                 for p, e in zip((0,) + tuple(ex[:-1]), ex)])   # launch, blocks

  gflops = lambda ex: np.asarray(ex, np.float64) + 0.05
  out = {}
  for embed, block in ((10.0, 0.01), (0.0, 10.0)):   # embedding-bound (a tiny model) / blocks
    full_seconds = float(seconds_with(embed, block)((3,))[-1]) + 0.5
    cols, records = study.cascade_columns(
        s_cal, s_ev, (1, 2, 3), tau, lambda ex: 100.0 * np.asarray(ex, np.float64) + 0.05,
        300.05, mapping.columns, (0.9, 0.99), groups, seconds=seconds_with(embed, block),
        full_seconds=full_seconds)
    out[embed] = [r for _, r in cols]
    for (_, r), rec in zip(cols, records):
      assert r["objective"] == rec["objective"] == "seconds"
      assert rec["evaluation"]["predicted_speedup"] == r["predicted_speedup"]
      assert "mean_seconds" in rec["calibration"] and "mean_gflops" not in rec["calibration"]
  for r in out[10.0]:          # every cascade loses: one full segment, said in one line
    assert r["exits"] == "3" and r["agreement"] == 1.0 and r["decided"] == [0.0, 0.0, 1.0]
    fb = r["fallback"]
    assert fb["best_exits"] != "3" and fb["best_predicted_speedup"] < r["predicted_speedup"]
    assert r["predicted_speedup"] == pytest.approx(10.53 / 10.03)
    assert fb["one_segment_predicted_speedup"] == pytest.approx(10.53 / 10.03)
  for r in out[0.0]:           # blocks dominate: early exits pay, no fallback
    assert r["fallback"] is None and r["predicted_speedup"] > 1.0 and r["exits"] != "3"
  margin = 3.1        # unless they must win by more than leaving all at exit 1 can (30.5 / 10)
  cols, _ = study.cascade_columns(
      s_cal, s_ev, (1, 2, 3), tau, lambda ex: np.asarray(ex, np.float64), 3.0, mapping.columns,
      (0.9,), groups, seconds=seconds_with(0.0, 10.0), full_seconds=30.5, min_speedup=margin)
  assert cols[0][1]["exits"] == "3" and cols[0][1]["fallback"]["min_speedup"] == margin
  assert f"predicted {margin:g}x faster than one full segment" in study.fallback_text(
      0.9, cols[0][1]["fallback"])
  rows = out[10.0]
  for r in rows:
    r["pauc"], r["images_per_second"] = 0.01, math.nan
  full_row = {"method": "exit_3", "kind": "exit", "exits": "3", "decided": [0, 0, 1],
              "mean_gflops": 3.05, "pauc": 0.01, "images_per_second": math.nan}
  head = study.headline(rows + [full_row], 0.99, {}, "a test CPU")
  assert head["text"].startswith("no cascade is predicted faster than one full segment and the "
                                 "full pass at 99 % agreement on a test CPU (the best found, "
                                 "exits ")
  assert "it runs as one full segment" in head["text"] and head["fallback"] == rows[1]["fallback"]
