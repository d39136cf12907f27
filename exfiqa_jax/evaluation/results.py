"""What an evaluation reports: the quality columns and, per benchmark × FR model × EDC mode,
the curves, pAUC and bootstrap CIs (the data model exfiqa_jax/report/evaluation.py writes out)."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from exfiqa_jax import columns
from exfiqa_jax.metrics import edc

KINDS = ("exit", "fusion", "attn", "method", "external", columns.RANDOM, columns.ORACLE)
# method: a quality method's column (crfiqa, serfiq, grafiqs_block1, vitnt, ...; methods/
# registry.py); external: another method's score file (evaluation/external.py)
OTHER_METHODS = ("method", "external")     # the baselines a paper compares against
BASELINE_KINDS = (columns.RANDOM, columns.ORACLE)     # references, never marked best


@dataclasses.dataclass(frozen=True)
class QualityColumn:
  """One quality score set. `name` is unique in a run (prefixed by the model when several
  quality models are evaluated); `exit` is the 1-based exit (exit_l, attn_l) or None."""
  name: str
  kind: str
  model: str = ""
  exit: int | None = None

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"quality kind must be one of {KINDS}, got {self.kind!r}")

  @property
  def is_baseline(self) -> bool:
    return self.kind in BASELINE_KINDS


@dataclasses.dataclass
class ModeEval:
  """One EDC mode of one benchmark: curves [S, F, R] and pAUC [S, F] with its CI."""
  mode: str
  limit: float
  curves: edc.EdcCurves
  pauc: np.ndarray
  ci_low: np.ndarray
  ci_high: np.ndarray


@dataclasses.dataclass
class BenchmarkEval:
  benchmark: str
  fr_model: str
  columns: list[QualityColumn]
  fmrs: np.ndarray
  modes: dict[str, ModeEval]
  n_pairs: int = 0
  n_genuine: int = 0

  @property
  def names(self) -> list[str]:
    return [c.name for c in self.columns]


def column_set(model: str, num_exits: int, prefix: bool, has_exits: bool = True,
               methods: Sequence[str] = ()) -> list[QualityColumn]:
  """The quality columns of one quality model, in scores.csv order: exit_1..exit_L, ex_fiqa_f,
  ex_fiqa_fw, attn_1..attn_L (only attn_* for mode "fr" models), then `methods` (the method
  columns it computed; a method model has only these)."""
  def name(column: str) -> str:
    return columns.with_model(model, column) if prefix else column

  cols = []
  if has_exits:
    cols += [QualityColumn(name(columns.exit_name(l)), "exit", model, l)
             for l in range(1, num_exits + 1)]
    cols += [QualityColumn(name(f), "fusion", model) for f in columns.FUSIONS]
  cols += [QualityColumn(name(columns.attn_name(l)), "attn", model, l)
           for l in range(1, num_exits + 1)]
  cols += [QualityColumn(name(m), "method", model) for m in methods]
  return cols




def best_index(values: np.ndarray, cols: Sequence[QualityColumn]) -> int | None:
  """Row with the lowest pAUC among the non-baseline columns (first on ties), None if none."""
  candidates = [i for i, c in enumerate(cols) if not c.is_baseline and np.isfinite(values[i])]
  if not candidates:
    return None
  return min(candidates, key=lambda i: (values[i], i))
