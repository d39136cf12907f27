"""Which quality columns an evaluation compares, and the pauc_diff.csv rows (docs/evaluation.md,
"Paired comparisons"). The numbers (Δ pAUC, its paired bootstrap interval and p-value) come from
exfiqa_jax/metrics/paired.py.

Default comparisons (`default_pairs`): per quality model, each fusion and the best exit against
the last exit, and every exit against `random`; then our best column (exits, fusions, ATTN)
against each quality method's column and score file (the baselines). Δ < 0 means quality_a discards better.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from exfiqa_jax import columns as columns_lib
from exfiqa_jax.evaluation import results
from exfiqa_jax.evaluation.results import QualityColumn
from exfiqa_jax.metrics.paired import paired_difference

COLUMNS = ("benchmark", "fr_model", "mode", "fmr", "quality_a", "quality_b", "delta_pauc",
           "ci_low", "ci_high", "p_value")


def default_pairs(columns: Sequence[QualityColumn], pauc: np.ndarray) -> list[tuple[int, int]]:
  """(a, b) row pairs for one FMR's pAUC [S]: per model, each fusion and the best exit (lowest
  pAUC, if not the last) against the last exit; every exit against `random`. Models without
  exit heads (mode "fr") use their attn_* columns as exits. Then our best (lowest pAUC among
  every model's exit, fusion and attn columns) against each method column (crfiqa, serfiq,
  vitnt, ...) and each score file's column."""
  pairs: list[tuple[int, int]] = []
  rnd = next((i for i, c in enumerate(columns) if c.name == columns_lib.RANDOM), None)
  for model in dict.fromkeys(c.model for c in columns if not c.is_baseline):
    mine = [(i, c) for i, c in enumerate(columns) if c.model == model]
    exits = [(c.exit, i) for i, c in mine if c.kind == "exit"]
    if not exits:
      exits = [(c.exit, i) for i, c in mine if c.kind == "attn"]
    if not exits:
      continue
    exits.sort()
    last = exits[-1][1]
    for i, c in mine:
      if c.kind == "fusion":
        pairs.append((i, last))
    finite = [(float(pauc[i]), e, i) for e, i in exits if np.isfinite(pauc[i])]
    if finite:
      best = min(finite)[2]
      if best != last:
        pairs.append((best, last))
    if rnd is not None:
      pairs += [(i, rnd) for _, i in exits]
  ours = [(float(pauc[i]), i) for i, c in enumerate(columns)
          if c.kind in ("exit", "fusion", "attn") and np.isfinite(pauc[i])]
  if ours:
    pairs += [(min(ours)[1], i) for i, c in enumerate(columns)
              if c.kind in results.OTHER_METHODS]
  return list(dict.fromkeys(pairs))


def compare_columns(benchmark: str, fr_model: str, mode: str, columns: Sequence[QualityColumn],
                    fmrs: Sequence[float], pauc: np.ndarray, samples: np.ndarray,
                    alpha: float = 0.05, pairs: Sequence[tuple[str, str]] | None = None
                    ) -> list[dict[str, Any]]:
  """pauc_diff.csv rows. pauc [S, F], samples [B, S, F] (bootstrap.Bootstrap); pairs by column name
  (default: `default_pairs`, chosen per FMR)."""
  names = [c.name for c in columns]
  rows = []
  for f, fmr in enumerate(fmrs):
    if pairs is None:
      chosen = default_pairs(columns, pauc[:, f])
    else:
      missing = [x for ab in pairs for x in ab if x not in names]
      if missing:
        raise ValueError(f"paired comparison names {missing} are not quality columns {names}")
      chosen = [(names.index(a), names.index(b)) for a, b in pairs]
    for a, b in chosen:
      delta, low, high, p = paired_difference(pauc[a, f], pauc[b, f], samples[:, a, f],
                                              samples[:, b, f], alpha)
      rows.append(dict(benchmark=benchmark, fr_model=fr_model, mode=mode, fmr=float(fmr),
                       quality_a=names[a], quality_b=names[b], delta_pauc=float(delta),
                       ci_low=float(low), ci_high=float(high), p_value=float(p)))
  return rows
