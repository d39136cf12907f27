"""Which quality columns an evaluation compares and its paired rows
(exfiqa_jax/evaluation/paired_columns.py), end to end: the EDC stage stores the resamples the
paired comparisons use (resampling unit from the config, errors naming their flags), and the
report writes pauc_diff.csv. The numbers themselves: tests/test_paired.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax.evaluation import paired_columns
from exfiqa_jax.evaluation.results import QualityColumn, column_set
from exfiqa_jax.metrics import bootstrap


def test_default_pairs_and_rows():
  cols = column_set("m", 3, prefix=False) + [QualityColumn("random", "random")]
  names = [c.name for c in cols]        # exit_1..3, ex_fiqa_f, ex_fiqa_fw, attn_1..3, random
  pauc = np.array([0.3, 0.1, 0.2, 0.15, 0.12, 0.5, 0.5, 0.5, 0.6])
  got = [(names[a], names[b]) for a, b in paired_columns.default_pairs(cols, pauc)]
  assert got == [("ex_fiqa_f", "exit_3"), ("ex_fiqa_fw", "exit_3"), ("exit_2", "exit_3"),
                 ("exit_1", "random"), ("exit_2", "random"), ("exit_3", "random")]
  pauc[2] = 0.05                        # the last exit is the best: no best-vs-last row
  assert ("exit_3", "exit_3") not in [(names[a], names[b])
                                      for a, b in paired_columns.default_pairs(cols, pauc)]
  samples = np.random.default_rng(1).random((10, len(cols), 2))
  rows = paired_columns.compare_columns("lfw", "arc", "fiqa", cols, (1e-3, 1e-4),
                                        np.stack([pauc, pauc], 1), samples,
                                        pairs=[("ex_fiqa_fw", "exit_3")])
  assert [tuple(r) for r in rows] == [paired_columns.COLUMNS] * 2
  assert rows[1]["fmr"] == 1e-4 and rows[0]["delta_pauc"] == pauc[4] - pauc[2]
  with pytest.raises(ValueError, match="not quality columns"):
    paired_columns.compare_columns("lfw", "arc", "fiqa", cols, (1e-3,), pauc[:, None], samples,
                                   pairs=[("exit_9", "random")])


def test_default_pairs_put_our_best_against_each_method():
  """A ViT-FIQA model beside two method models (CR-FIQA, GraFIQs' two first columns): the pairs
  of a ViT-FIQA-only run first, unchanged, then our best (any model's exit, fusion or attn)
  against every method column; method models add no pairs of their own."""
  ours = column_set("t", 2, prefix=True)        # t/exit_1, t/exit_2, t/ex_fiqa_f(w), t/attn_1..2
  cols = (ours + column_set("cr", 0, True, False, ("crfiqa",))
          + column_set("gq", 0, True, False, ("grafiqs_image", "grafiqs_block1"))
          + [QualityColumn("random", "random")])
  names = [c.name for c in cols]
  assert names[len(ours):] == ["cr/crfiqa", "gq/grafiqs_image", "gq/grafiqs_block1", "random"]
  pauc = np.array([0.3, 0.2, 0.25, 0.15, 0.5, 0.4, 0.1, 0.2, 0.3, 0.6])
  vit_only = ours + cols[-1:]
  alone = [(vit_only[a].name, vit_only[b].name) for a, b in paired_columns.default_pairs(
      vit_only, np.concatenate([pauc[:len(ours)], pauc[-1:]]))]
  got = [(names[a], names[b]) for a, b in paired_columns.default_pairs(cols, pauc)]
  assert got == alone + [("t/ex_fiqa_fw", "cr/crfiqa"), ("t/ex_fiqa_fw", "gq/grafiqs_image"),
                         ("t/ex_fiqa_fw", "gq/grafiqs_block1")]
  assert not paired_columns.default_pairs(cols[len(ours):], pauc[len(ours):])   # no ours


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
  want = bootstrap.bootstrap(cmp["scores"], cmp["is_genuine"], pq, (1e-1,), num_resamples=6,
                             seed=int(config.seed), units=units)
  np.testing.assert_array_equal(np.moveaxis(st["samples"], 1, 0), want.samples)
  np.testing.assert_array_equal(st["ci_low"], bootstrap.percentile_ci(want.samples, 0.05)[0])
  assert st["band_low"].shape == (len(cols), 1, 20)
  rows = paired_columns.compare_columns("toy", "fr", "fiqa", cols, (1e-1,), st["pauc"],
                                        want.samples)
  assert rows and all(np.isfinite(r["p_value"]) for r in rows)
  config.eval.bootstrap_unit = "pair"                 # the unit is part of the stage identity
  st2 = pipeline.edc_stage(cache, bench, "fr", "fiqa", cmp, cols, image_q, {}, config)
  assert not st2.cached and not np.array_equal(st2["samples"], st["samples"])
