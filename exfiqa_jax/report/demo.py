"""The demo's additions to the evaluation report (exfiqa_jax/report/evaluation.py): the notes
under summary.md's title and the Spearman(quality, -severity) table under its tables."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from exfiqa_jax.data import synthetic
from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.report import tables


def notes(bench: Benchmark, check: Mapping[str, Any], seconds: Mapping[str, float],
          early_exit: str) -> list[str]:
  """The test data, the targets and whether they were met, the time, the early-exit headline."""
  verdict = "met" if check["met"] else "NOT met"
  return [
      f"Synthetic faces: {bench.num_images} test images of "
      f"{len(np.unique(bench.extra['identity']))} "
      f"identities unseen in training, {len(bench.is_genuine)} pairs "
      f"({int(bench.is_genuine.sum())} genuine); FR model = the quality model's own feature head. "
      f"`oracle` = minus the true degradation severity; `random` = seeded random quality.",
      f"Targets ({verdict}): best exit `{check['best_exit']}` pAUC at FMR {check['fmr']:g} = "
      f"{check['ratio_to_random']:.3f} x random (target <= {check['max_ratio_to_random']}); "
      f"Spearman(quality, -severity) = {check['spearman']:.3f} (target >= "
      f"{check['min_spearman']}); oracle = {check['oracle_ratio_to_random']} x random.",
      f"Time: {seconds['total']:.0f} s (training {seconds['train']:.0f} s, test data "
      f"{seconds['test_data']:.0f} s, evaluation {seconds['evaluate']:.0f} s, early exits "
      f"{seconds['early_exit']:.0f} s).",
      f"Early exits (early_exit/early_exit.md; thresholds calibrated on the identity-disjoint "
      f"val split): {early_exit}.",
  ]


def severity_table(rho: Mapping[str, float], rho_kind: Mapping[str, Mapping[str, float]]
                   ) -> list[str]:
  """summary.md's "Spearman(quality, -severity)" section: overall and per degradation kind."""
  return ["", "## Spearman(quality, -severity)", ""] + tables.markdown_table(
      ["quality", "all"] + list(synthetic.DEGRADATIONS),
      ([name, f"{rho[name]:.3f}"] + [f"{rho_kind[name].get(k, float('nan')):.3f}"
                                     for k in synthetic.DEGRADATIONS] for name in rho))
