"""The comparison table (exfiqa_jax/evaluation/comparison.py) on constructed results: ranks with
ties, the best marks, mean ranks, default rows, the Δ against the reference (equal to the paired
bootstrap of metrics/paired.py), missing cells and every error naming its flag."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.evaluation import comparison
from exfiqa_jax.evaluation.results import BenchmarkEval, ModeEval, QualityColumn
from exfiqa_jax.metrics import edc
from exfiqa_jax.metrics.paired import paired_difference

FMRS = (1e-3, 1e-4)


def _columns(extra=()):
  cols = [QualityColumn(f"exit_{k}", "exit", "m", k) for k in (1, 2, 3)]
  cols += [QualityColumn("ex_fiqa_f", "fusion", "m"), QualityColumn("ex_fiqa_fw", "fusion", "m")]
  cols += [QualityColumn(f"attn_{k}", "attn", "m", k) for k in (1, 2, 3)]
  cols += [QualityColumn("crfiqa", "method", "cr"), QualityColumn("ofiq", "external")]
  return cols + list(extra) + [QualityColumn("random", "random")]


def _result(bench, fr, pauc, cols, samples=None, modes=("fiqa",)):
  """A BenchmarkEval whose pAUC [S, F] is `pauc` (the curves are placeholders)."""
  s, f = pauc.shape
  curves = edc.EdcCurves("fiqa", np.asarray(FMRS), np.linspace(0, 1, 3), np.zeros((s, f, 3)),
                         np.zeros((s, f, 3)), np.zeros((s, 3)), np.zeros((s, 3)),
                         np.zeros((s, 3)), pauc)
  ci = (pauc - 0.001, pauc + 0.001)
  return BenchmarkEval(bench, fr, cols, np.asarray(FMRS),
                       {m: ModeEval(m, 0.3, curves, pauc, *ci) for m in modes})


def test_ranks_ties_best_and_mean_rank():
  cols = _columns()
  names = [c.name for c in cols]
  rng = np.random.default_rng(0)
  a = rng.uniform(0.01, 0.05, (len(cols), 2))
  b = rng.uniform(0.01, 0.05, (len(cols), 2))
  a[names.index("ex_fiqa_fw")] = a[names.index("crfiqa")] = 0.001    # a tie for the best
  a[names.index("random")] = 0.0                   # a reference level is never ranked or best
  comp = comparison.build([_result("lfw", "arc", a, cols), _result("agedb", "arc", b, cols)],
                          rows="exit_3,ex_fiqa_fw,crfiqa,ofiq,random")
  assert comp.rows == ["exit_3", "ex_fiqa_fw", "crfiqa", "ofiq", "random"]
  assert comp.reference == "exit_3"
  assert comp.columns == [("lfw", "arc", 1e-3), ("lfw", "arc", 1e-4), ("agedb", "arc", 1e-3),
                          ("agedb", "arc", 1e-4)]
  idx = [names.index(r) for r in comp.rows[:4]]
  for k, (res, f) in enumerate([(a, 0), (a, 1), (b, 0), (b, 1)]):
    values = res[idx, f]
    assert np.array_equal(comp.pauc[0, :4, k], values)               # cells = the results
    expected = np.array([1 + np.sum(values < v) + (np.sum(values == v) - 1) / 2 for v in values])
    assert np.array_equal(comp.rank[0, :4, k], expected)             # average ranks
    assert list(comp.best[0, :4, k]) == list(values == values.min())  # ties both bold
    assert np.isnan(comp.rank[0, 4, k]) and not comp.best[0, 4, k]   # random: never ranked
  assert comp.rank[0, 1, 0] == comp.rank[0, 2, 0] == 1.5 and comp.best[0, 1:3, 0].all()
  assert np.allclose(comp.mean_rank[0, :4], comp.rank[0, :4].mean(axis=1))
  assert np.isnan(comp.mean_rank[0, 4])
  assert np.isnan(comp.delta[0, 0]).all()                            # the reference itself
  assert np.array_equal(comp.delta[0, 1, :2], a[idx[0]] - a[idx[1]])  # no bootstrap: Δ only
  assert np.isnan(comp.p_value).all()


def test_deltas_are_the_paired_bootstrap():
  cols = _columns()
  rng = np.random.default_rng(1)
  pauc = rng.uniform(0.01, 0.05, (len(cols), 2))
  samples = pauc[:, None, :] + rng.normal(0, 0.004, (len(cols), 50, 2))   # [S, B, F]
  res = _result("lfw", "arc", pauc, cols)
  comp = comparison.build([res], {("lfw", "arc", "fiqa"): samples}, rows="ex_fiqa_fw,ofiq",
                          reference="ofiq", alpha=0.1)
  i, j = 4, 9                                                         # ex_fiqa_fw, ofiq
  for f in range(2):
    d, lo, hi, p = paired_difference(pauc[j, f], pauc[i, f], samples[j, :, f], samples[i, :, f],
                                     0.1)
    assert (comp.delta[0, 0, f], comp.delta_low[0, 0, f], comp.delta_high[0, 0, f],
            comp.p_value[0, 0, f]) == (d, lo, hi, p)
  rows = comparison.csv_rows(comp)
  assert len(rows) == 2 * 2 and {r["reference"] for r in rows} == {"ofiq"}
  assert [r["pauc"] for r in rows if r["quality"] == "ofiq"] == list(pauc[j])


def test_default_rows_best_exit_and_missing_cells():
  cols = _columns()
  names = [c.name for c in cols]
  pauc = np.full((len(cols), 2), 0.04)
  pauc[names.index("exit_2")] = 0.01                 # the best exit, not the last
  oracle = QualityColumn("oracle", "oracle")
  synthetic = _columns([oracle])
  comp = comparison.build([_result("lfw", "arc", pauc, cols),
                           _result("synth", "arc", np.full((len(synthetic), 2), 0.03),
                                   synthetic)])
  assert comp.rows == ["exit_3", "ex_fiqa_f", "ex_fiqa_fw", "exit_2", "attn_3", "crfiqa", "ofiq"]
  assert "exit_2" in comp.why and comp.reference == "exit_3"
  with_oracle = comparison.build([_result("lfw", "arc", pauc, cols),
                                  _result("synth", "arc", np.full((len(synthetic), 2), 0.03),
                                          synthetic)], rows="exit_3,oracle")
  assert list(with_oracle.present[0, 1]) == [False, False, True, True]   # only where it exists
  assert len(comparison.csv_rows(with_oracle)) == 4 + 2


def test_errors_name_their_flags():
  cols = _columns()
  res = [_result("lfw", "arc", np.full((len(cols), 2), 0.02), cols)]
  with pytest.raises(ValueError, match=r"--config\.report\.comparison\.rows=.*'nope'"):
    comparison.build(res, rows="exit_3,nope")
  with pytest.raises(ValueError, match=r"--config\.report\.comparison\.reference=ofiq"):
    comparison.build(res, rows="exit_3", reference="ofiq")
  with pytest.raises(ValueError, match=r"--config\.report\.comparison\.fmrs=.*--config\.eval"):
    comparison.build(res, fmrs="0.01")
  assert comparison.build(res, fmrs="1e-4").columns == [("lfw", "arc", 1e-4)]


def test_average_ranks():
  assert list(comparison.average_ranks(np.array([3.0, 1.0, 3.0, np.nan, 2.0]))[[0, 1, 2, 4]]) \
      == [3.5, 1.0, 3.5, 2.0]
  assert np.isnan(comparison.average_ranks(np.array([np.nan, 1.0]))[0])
