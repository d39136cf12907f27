"""Paired comparisons (exfiqa_jax/metrics/paired.py): the p-value is calibrated under the null,
a planted difference is found, and the numbers equal a plain NumPy computation.

Tolerances: Δ, interval and p-value against NumPy on the same samples: 1e-12 (float64).
"""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.metrics import edc, paired
from exfiqa_jax.evaluation.results import QualityColumn, column_set


def two_columns(seed, p=800, n_gen=300, planted=False):
  """Scores that depend on a latent quality; column a and b are equally good noisy copies of
  it (correlated: the pairing matters), or b is pure noise (planted difference)."""
  rng = np.random.default_rng(seed)
  gen = np.zeros(p, bool)
  gen[rng.choice(p, n_gen, replace=False)] = True
  lat = rng.standard_normal(p)
  w = 0.2 if planted else 0.1
  scores = np.where(gen, 0.4 + 0.15 * rng.standard_normal(p) + w * lat,
                    0.1 * rng.standard_normal(p)).astype(np.float32)
  qa = lat + (0.3 if planted else 1.0) * rng.standard_normal(p)
  qb = rng.standard_normal(p) if planted else lat + rng.standard_normal(p)
  return scores, gen, np.stack([qa, qb]).astype(np.float32)


def test_p_value_uniform_under_the_null():
  """KS distance of 24 null p-values (one per seed) to U(0, 1) below 0.33 (≈ the 1 % critical
  value for n = 24; loose on purpose: few seeds, 60 resamples)."""
  ps = []
  for seed in range(24):
    scores, gen, q = two_columns(seed)
    res = edc.bootstrap(scores, gen, q, fmrs=(1e-1,), num_resamples=60, seed=seed)
    ps.append(float(paired.paired_difference(res.pauc[0], res.pauc[1], res.samples[:, 0],
                                             res.samples[:, 1])[3][0]))
  ps = np.sort(ps)
  n = len(ps)
  ks = max(np.max(np.arange(1, n + 1) / n - ps), np.max(ps - np.arange(n) / n))
  assert ks < 0.33, (ks, ps)


def test_planted_difference_is_detected():
  scores, gen, q = two_columns(99, planted=True)
  res = edc.bootstrap(scores, gen, q, fmrs=(1e-1,), num_resamples=60, seed=1)
  delta, low, high, p = paired.paired_difference(res.pauc[0], res.pauc[1], res.samples[:, 0],
                                                 res.samples[:, 1])
  assert delta[0] < 0 and high[0] < 0 and p[0] < 0.05, (delta, low, high, p)


def test_paired_difference_equals_numpy():
  rng = np.random.default_rng(0)
  a, b = rng.random((40, 3)), rng.random((40, 3))
  a[3, 1] = np.nan                                          # a resample lost its genuines
  pa, pb = np.array([0.5, 0.4, 0.3]), np.array([0.45, 0.42, 0.3])
  delta, low, high, p = paired.paired_difference(pa, pb, a, b, alpha=0.1)
  for f in range(3):
    d = (a[:, f] - b[:, f])[np.isfinite(a[:, f] - b[:, f])]
    dd = pa[f] - pb[f]
    assert delta[f] == dd
    assert low[f] == pytest.approx(np.percentile(d, 5), abs=1e-12)
    assert high[f] == pytest.approx(np.percentile(d, 95), abs=1e-12)
    assert p[f] == pytest.approx((1 + np.sum(np.abs(d - dd) >= abs(dd))) / (1 + len(d)), abs=1e-12)
  nan = paired.paired_difference(pa, pb, np.zeros((0, 3)), np.zeros((0, 3)))
  assert np.all(np.isnan(nan[1])) and np.all(np.isnan(nan[3]))


def test_default_pairs_and_rows():
  cols = column_set("m", 3, prefix=False) + [QualityColumn("random", "random")]
  names = [c.name for c in cols]        # exit_1..3, ex_fiqa_f, ex_fiqa_fw, attn_1..3, random
  pauc = np.array([0.3, 0.1, 0.2, 0.15, 0.12, 0.5, 0.5, 0.5, 0.6])
  got = [(names[a], names[b]) for a, b in paired.default_pairs(cols, pauc)]
  assert got == [("ex_fiqa_f", "exit_3"), ("ex_fiqa_fw", "exit_3"), ("exit_2", "exit_3"),
                 ("exit_1", "random"), ("exit_2", "random"), ("exit_3", "random")]
  pauc[2] = 0.05                        # the last exit is the best: no best-vs-last row
  assert ("exit_3", "exit_3") not in [(names[a], names[b])
                                      for a, b in paired.default_pairs(cols, pauc)]
  samples = np.random.default_rng(1).random((10, len(cols), 2))
  rows = paired.compare_columns("lfw", "arc", "fiqa", cols, (1e-3, 1e-4),
                                np.stack([pauc, pauc], 1), samples,
                                pairs=[("ex_fiqa_fw", "exit_3")])
  assert [tuple(r) for r in rows] == [paired.COLUMNS] * 2
  assert rows[1]["fmr"] == 1e-4 and rows[0]["delta_pauc"] == pauc[4] - pauc[2]
  with pytest.raises(ValueError, match="not quality columns"):
    paired.compare_columns("lfw", "arc", "fiqa", cols, (1e-3,), pauc[:, None], samples,
                           pairs=[("exit_9", "random")])


# ------------------------------------------------------------------------------------------
# The evaluation's EDC stage: resampling unit from the config, samples stored for the paired
# comparisons, errors naming their flags (no models: a stage fed with arrays)
# ------------------------------------------------------------------------------------------
def _stage_inputs(tmp_path, with_identity=True):
  from configs import eval_verification
  from exfiqa_jax.evaluation import benchmarks, stages
  rng = np.random.default_rng(3)
  n_img, n_pairs = 120, 500
  ident = np.repeat(np.arange(30), 4)
  pairs = rng.integers(0, n_img, (n_pairs, 2))
  gen = ident[pairs[:, 0]] == ident[pairs[:, 1]]
  scores = np.where(gen, 0.5, 0.0) + 0.2 * rng.standard_normal(n_pairs)
  bench = benchmarks.array_benchmark("toy", np.zeros((n_img, 112, 112, 3), np.uint8),
                                     [f"i{k}" for k in range(n_img)], pairs, gen,
                                     extra={"identity": ident} if with_identity else None)
  cmp = stages.Stage("compare/toy/fr", "f" * 64, {"scores": scores.astype(np.float32),
                                                   "is_genuine": gen}, False)
  cols = column_set("m", 2, prefix=False, has_exits=True) + [QualityColumn("random", "random")]
  image_q = rng.random((len(cols), n_img)).astype(np.float32)
  config = eval_verification.get_config("benchmarks=toy,size=tiny")
  config.output = str(tmp_path)
  config.eval.bootstrap = 6
  config.eval.fmrs = (1e-1,)
  return bench, cmp, cols, image_q, config, stages.StageCache(str(tmp_path / "cache"), False)


def test_edc_stage_identity_bootstrap_and_paired_rows(tmp_path):
  from exfiqa_jax.evaluation import pipeline
  bench, cmp, cols, image_q, config, cache = _stage_inputs(tmp_path)
  config.eval.bootstrap_unit = "identity"
  st = pipeline.edc_stage(cache, bench, "fr", "fiqa", cmp, cols, image_q, {}, config)
  pq = np.minimum(image_q[:, bench.pairs[:, 0]], image_q[:, bench.pairs[:, 1]])
  units = bench.extra["identity"][bench.pairs]
  want = edc.bootstrap(cmp["scores"], cmp["is_genuine"], pq, (1e-1,), num_resamples=6,
                       seed=int(config.seed), units=units)
  np.testing.assert_array_equal(np.moveaxis(st["samples"], 1, 0), want.samples)
  np.testing.assert_array_equal(st["ci_low"], edc.percentile_ci(want.samples, 0.05)[0])
  assert st["band_low"].shape == (len(cols), 1, 20)
  rows = paired.compare_columns("toy", "fr", "fiqa", cols, (1e-1,), st["pauc"], want.samples)
  assert rows and all(np.isfinite(r["p_value"]) for r in rows)
  config.eval.bootstrap_unit = "pair"                 # the unit is part of the stage identity
  st2 = pipeline.edc_stage(cache, bench, "fr", "fiqa", cmp, cols, image_q, {}, config)
  assert not st2.cached and not np.array_equal(st2["samples"], st["samples"])


@pytest.mark.parametrize("field,value,match", [
    ("alpha", 2.0, "--config.eval.alpha"),
    ("bootstrap_unit", "identity", "bootstrap_unit=identity"),
    ("bootstrap_unit", "template", "bootstrap_unit=template"),
    ("bootstrap_unit", "subject", "bootstrap_unit='subject'")])
def test_eval_settings_fail_naming_their_flag(tmp_path, field, value, match):
  from exfiqa_jax.evaluation import pipeline
  bench, _, _, _, config, _ = _stage_inputs(tmp_path, with_identity=False)
  config.eval[field] = value
  with pytest.raises(ValueError, match=match):
    pipeline.check_eval_config(config)
    pipeline.bootstrap_unit(bench, config)


def test_report_sections(tmp_path):
  from exfiqa_jax.report import evaluation as report, tables
  rows = [dict(benchmark="lfw", fr_model="arc", mode="fiqa", fmr=1e-3, quality_a=a, quality_b=b,
               delta_pauc=-2e-4, ci_low=-3e-4, ci_high=-1e-4, p_value=0.01)
          for a, b in (("ex_fiqa_fw", "exit_12"), ("exit_1", "random"))]
  path = report.write_paired(str(tmp_path), rows)
  got = tables.read_csv(path)
  assert list(got[0]) == list(paired.COLUMNS) and float(got[0]["delta_pauc"]) == -2e-4
  md = "\n".join(report.paired_markdown(rows))
  assert "| ex_fiqa_fw | exit_12 | -0.200 | [-0.300, -0.100] | 0.01 |" in md
  assert "1 comparisons, 1 significantly better" in md
  line = report.sanity_markdown([{"benchmark": "lfw", "fr_model": "arc", "kind": "accuracy",
                                  "accuracy_10fold": 0.9975},
                                 {"benchmark": "ijbc", "fr_model": "arc", "kind": "tar_at_far",
                                  "tar@far=1e-04": 0.961, "tar@far=1e-05": 0.93}])[0]
  assert "lfw/arc 10-fold accuracy 99.75 %" in line
  assert "ijbc/arc TAR@FAR=1e-04 96.10 %, TAR@FAR=1e-05 93.00 %" in line
