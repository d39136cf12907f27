"""How well quality tracks a known degradation (the synthetic worlds record each image's
severity): Spearman(quality, -severity) per quality column, and the demo's targets
(docs/evaluation.md; configs/demo.py, `targets`).
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from exfiqa_jax import columns
from exfiqa_jax.data import synthetic
from exfiqa_jax.evaluation import results


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation with average ranks for ties (scipy.stats.spearmanr)."""
  ra, rb = _average_ranks(np.asarray(a, np.float64)), _average_ranks(np.asarray(b, np.float64))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
  return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x), dtype=np.float64)
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, weights=ranks)
  return sums[inverse] / counts[inverse]


def severity_correlations(names: Sequence[str], image_q: np.ndarray, severity: np.ndarray,
                          kind: np.ndarray
                          ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Spearman(quality, -severity) per column, overall and within each degradation kind (the
  clean images included in every kind, so each kind spans severity 0 .. 1)."""
  overall, by_kind = {}, {}
  clean = severity == 0
  for name, q in zip(names, image_q):
    overall[name] = round(spearman(q, -severity), 4)
    by_kind[name] = {k: round(spearman(q[sel], -severity[sel]), 4)
                     for i, k in enumerate(synthetic.DEGRADATIONS)
                     if (sel := clean | ((kind == i) & ~clean)).sum() > 2}
  return overall, by_kind


def target_check(targets, result: results.BenchmarkEval, rho: Mapping[str, float]
                 ) -> dict[str, Any]:
  """The demo's targets (config.targets): the best exit's pAUC at targets.fmr (fiqa mode)
  relative to `random`, and its Spearman correlation with -severity."""
  r = result
  m = r.modes["fiqa"]
  f = int(np.argmin(np.abs(np.log(r.fmrs) - np.log(float(targets.fmr)))))
  rnd = r.names.index(columns.RANDOM)
  exits = [s for s, c in enumerate(r.columns) if c.kind == "exit"]
  best = min(exits, key=lambda s: m.pauc[s, f])
  ratio = float(m.pauc[best, f] / m.pauc[rnd, f]) if m.pauc[rnd, f] > 0 else float("nan")
  name = r.names[best]
  oracle = r.names.index(columns.ORACLE) if columns.ORACLE in r.names else None
  return {
      "fmr": float(r.fmrs[f]), "best_exit": name, "best_exit_pauc": float(m.pauc[best, f]),
      "random_pauc": float(m.pauc[rnd, f]), "ratio_to_random": round(ratio, 4),
      "oracle_ratio_to_random": (round(float(m.pauc[oracle, f] / m.pauc[rnd, f]), 4)
                                 if oracle is not None and m.pauc[rnd, f] > 0 else None),
      "spearman": rho[name],
      "max_ratio_to_random": float(targets.max_ratio_to_random),
      "min_spearman": float(targets.min_spearman),
      "met": bool(ratio <= targets.max_ratio_to_random and rho[name] >= targets.min_spearman)}
