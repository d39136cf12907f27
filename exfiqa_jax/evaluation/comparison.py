"""The comparison every FIQA paper prints (docs/evaluation.md, "Compare with other methods"):
quality methods as rows, (benchmark, FR model) as columns, pAUC-EDC per FMR and mode with its
bootstrap interval, the best per column, each row's mean rank, and the paired Δ pAUC of a
reference row against every other row.

Rows (`default_rows`): per quality model its headline columns — the last exit, the fusions, the
best exit (lowest mean rank among the model's exits over every column of the comparison), the
last block's ATTN-FIQA, its method columns — then every score file; never all exits, never the
`random`/`oracle` references (ask for them by name). The reference defaults to the first row (a
ViT-FIQA model's last exit: the single-exit model the others are measured against).
Ranks are average ranks (ties share the mean of their places) among the rows that are not
references; the mean rank of a row is over every (benchmark, FR model, FMR) column of a mode.
The numbers are the evaluation's own (pauc.csv; the Δ as pauc_diff.csv computes them,
metrics/paired.py): nothing is recomputed.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from exfiqa_jax.evaluation.results import BenchmarkEval, QualityColumn
from exfiqa_jax.metrics.paired import paired_difference

ROWS_FLAG = "--config.report.comparison.rows="
REFERENCE_FLAG = "--config.report.comparison.reference="
FMRS_FLAG = "--config.report.comparison.fmrs="
CSV_COLUMNS = ("quality", "benchmark", "fr_model", "mode", "fmr", "pauc", "ci_low", "ci_high",
               "rank", "best", "mean_rank", "reference", "delta_pauc", "delta_ci_low",
               "delta_ci_high", "p_value")


@dataclasses.dataclass
class Comparison:
  """One comparison. Arrays are [M, R, K]: mode, row, column k = (cell, FMR) in `columns`
  (cells in the evaluation's order, FMRs inside); NaN where a row has no value."""
  rows: list[str]
  why: dict[str, str]                # row → why a default row is there ("best exit of m")
  reference: str
  baseline: list[bool]               # per row: a reference level (random, oracle), never ranked
  modes: list[str]
  limits: list[float]                # per mode: the pAUC limit
  columns: list[tuple[str, str, float]]   # (benchmark, fr_model, fmr)
  present: np.ndarray                # bool: the row is a column of that cell and mode
  pauc: np.ndarray
  ci_low: np.ndarray
  ci_high: np.ndarray
  rank: np.ndarray
  best: np.ndarray                   # bool
  mean_rank: np.ndarray              # [M, R]
  delta: np.ndarray                  # reference − row, its interval and p (paired bootstrap)
  delta_low: np.ndarray
  delta_high: np.ndarray
  p_value: np.ndarray


def _all_columns(results: Sequence[BenchmarkEval]) -> dict[str, QualityColumn]:
  out: dict[str, QualityColumn] = {}
  for r in results:
    for c in r.columns:
      out.setdefault(c.name, c)
  return out


def average_ranks(values: np.ndarray) -> np.ndarray:
  """Ranks 1..n of the finite values (lowest = 1), ties sharing the mean of their places; NaN
  stays NaN."""
  values = np.asarray(values, np.float64)
  out = np.full(values.shape, np.nan)
  ok = np.flatnonzero(np.isfinite(values))
  order = ok[np.argsort(values[ok], kind="stable")]
  start = 0
  while start < len(order):
    stop = start
    while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
      stop += 1
    out[order[start:stop + 1]] = (start + stop) / 2 + 1
    start = stop + 1
  return out


def default_rows(results: Sequence[BenchmarkEval]) -> tuple[list[str], dict[str, str]]:
  """(rows, why): every quality model's headline columns, then every score file (module
  docstring)."""
  cols = _all_columns(results)
  rows, why = [], {}
  models = dict.fromkeys(c.model for c in cols.values() if c.model)
  for model in models:
    mine = [c for c in cols.values() if c.model == model]
    exits = sorted((c for c in mine if c.kind == "exit"), key=lambda c: c.exit)
    attn = sorted((c for c in mine if c.kind == "attn"), key=lambda c: c.exit)
    best = _best_exit(results, [c.name for c in exits]) if exits else None
    rows += [exits[-1].name] if exits else []
    rows += [c.name for c in mine if c.kind == "fusion"]
    if best is not None and best != exits[-1].name:
      rows.append(best)
      why[best] = f"the best exit of {model} (lowest mean rank among its exits)"
    if attn:
      rows.append(attn[-1].name)
    rows += [c.name for c in mine if c.kind == "method"]
  rows += [c.name for c in cols.values() if c.kind == "external"]
  return rows, why


def _best_exit(results: Sequence[BenchmarkEval], exits: Sequence[str]) -> str:
  """The exit with the lowest mean rank among `exits` (shallow to deep) over every benchmark, FR
  model, mode and FMR; on a tie the shallower (fewer blocks for the same rank)."""
  ranks = []
  for r in results:
    idx = [r.names.index(e) for e in exits if e in r.names]
    if len(idx) != len(exits):
      continue
    for m in r.modes.values():
      for f in range(len(r.fmrs)):
        ranks.append(average_ranks(m.pauc[idx, f]))
  if not ranks:
    return exits[-1]
  mean = np.nanmean(np.stack(ranks), axis=0)
  return exits[int(np.nanargmin(mean))]


def _pick_rows(results: Sequence[BenchmarkEval], rows: str | Sequence[str], reference: str
               ) -> tuple[list[str], dict[str, str], str]:
  known = _all_columns(results)
  asked = ([r.strip() for r in rows.split(",") if r.strip()] if isinstance(rows, str)
           else [str(r) for r in rows])
  chosen, why = (list(dict.fromkeys(asked)), {}) if asked else default_rows(results)
  unknown = [r for r in chosen if r not in known]
  if unknown:
    raise ValueError(f"{ROWS_FLAG}{','.join(asked)}: {unknown} are not quality columns of this "
                     f"evaluation; the columns are {list(known)}")
  if not chosen:
    raise ValueError(f"no quality column to compare; pass {ROWS_FLAG}<col1>,<col2>,...")
  reference = str(reference or "").strip() or chosen[0]
  if reference not in chosen:
    raise ValueError(f"{REFERENCE_FLAG}{reference}: not a row of the comparison {chosen} (add it "
                     f"to {ROWS_FLAG} or leave the reference empty for the first row)")
  return chosen, why, reference


def pick_fmrs(value: str | Sequence[float], fmrs: Sequence[float]) -> list[float]:
  """The comparison's FMRs: `value` (a comma list or a sequence; empty = every evaluated FMR),
  each one of the evaluated `fmrs`."""
  asked = ([v for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value))
  if not asked:
    return [float(f) for f in fmrs]
  try:
    chosen = [float(v) for v in asked]
  except ValueError:
    raise ValueError(f"{FMRS_FLAG}{value}: not a list of numbers") from None
  missing = [f for f in chosen if not any(np.isclose(f, g, rtol=1e-9) for g in fmrs)]
  if missing:
    raise ValueError(f"{FMRS_FLAG}{value}: {missing} were not evaluated; the evaluation's FMRs "
                     f"are {[float(f) for f in fmrs]} (--config.eval.fmrs)")
  return [next(float(g) for g in fmrs if np.isclose(f, g, rtol=1e-9)) for f in chosen]


def build(results: Sequence[BenchmarkEval],
          samples: Mapping[tuple[str, str, str], np.ndarray] | None = None,
          rows: str | Sequence[str] = "", reference: str = "",
          fmrs: str | Sequence[float] = "", alpha: float = 0.05) -> Comparison:
  """The comparison of `results` (one BenchmarkEval per benchmark × FR model). `samples`:
  (benchmark, fr_model, mode) → bootstrap pAUC [S, B, F] as the EDC stage stores them (none or
  B = 0: no Δ intervals or p-values); `rows`, `reference`, `fmrs`: as the config's
  report.comparison fields."""
  if not results:
    raise ValueError("nothing to compare: the evaluation has no results")
  chosen, why, reference = _pick_rows(results, rows, reference)
  known = _all_columns(results)
  baseline = [known[r].is_baseline for r in chosen]
  modes = list(dict.fromkeys(m for r in results for m in r.modes))
  fmr_list = pick_fmrs(fmrs, [float(f) for f in results[0].fmrs])
  cols = [(r.benchmark, r.fr_model, f) for r in results for f in fmr_list]
  shape = (len(modes), len(chosen), len(cols))
  a = {k: np.full(shape, np.nan) for k in ("pauc", "ci_low", "ci_high", "delta", "delta_low",
                                           "delta_high", "p_value")}
  present = np.zeros(shape, bool)
  limits = [np.nan] * len(modes)
  k = 0
  for r in results:
    for fmr in fmr_list:
      f = [float(x) for x in r.fmrs].index(fmr)
      for mi, mode in enumerate(modes):
        if mode not in r.modes:
          continue
        m = r.modes[mode]
        limits[mi] = m.limit
        boot = (samples or {}).get((r.benchmark, r.fr_model, mode))
        ref = r.names.index(reference) if reference in r.names else None
        for ri, name in enumerate(chosen):
          if name not in r.names:
            continue
          s = r.names.index(name)
          present[mi, ri, k] = True
          a["pauc"][mi, ri, k] = m.pauc[s, f]
          a["ci_low"][mi, ri, k], a["ci_high"][mi, ri, k] = m.ci_low[s, f], m.ci_high[s, f]
          if ref is not None and s != ref and boot is not None and boot.shape[1] > 0:
            d, lo, hi, p = paired_difference(m.pauc[ref, f], m.pauc[s, f], boot[ref, :, f],
                                             boot[s, :, f], alpha)
            a["delta"][mi, ri, k], a["delta_low"][mi, ri, k] = d, lo
            a["delta_high"][mi, ri, k], a["p_value"][mi, ri, k] = hi, p
          elif ref is not None and s != ref:
            a["delta"][mi, ri, k] = m.pauc[ref, f] - m.pauc[s, f]
      k += 1
  ranked = np.where(np.asarray(baseline)[None, :, None], np.nan, a["pauc"])
  rank = np.apply_along_axis(average_ranks, 1, ranked)
  best = rank == np.nanmin(np.where(np.isfinite(rank), rank, np.inf), axis=1, keepdims=True)
  with warnings.catch_warnings():    # a row without a rank in a mode: NaN, not a warning
    warnings.simplefilter("ignore", RuntimeWarning)
    mean_rank = np.nanmean(rank, axis=2)
  return Comparison(chosen, why, reference, baseline, modes, [float(x) for x in limits], cols,
                    present, a["pauc"], a["ci_low"], a["ci_high"], rank, best & np.isfinite(rank),
                    mean_rank, a["delta"], a["delta_low"], a["delta_high"], a["p_value"])


def csv_rows(comp: Comparison) -> list[dict[str, Any]]:
  """comparison.csv: one row per (quality row, benchmark, FR model, mode, FMR), raw pAUC (the
  values of pauc.csv), its rank, best flag, the row's mean rank in that mode, and the Δ against
  the reference."""
  out = []
  for mi, mode in enumerate(comp.modes):
    for ri, name in enumerate(comp.rows):
      for k, (bench, fr, fmr) in enumerate(comp.columns):
        if not comp.present[mi, ri, k]:
          continue
        out.append(dict(
            quality=name, benchmark=bench, fr_model=fr, mode=mode, fmr=fmr,
            pauc=float(comp.pauc[mi, ri, k]), ci_low=float(comp.ci_low[mi, ri, k]),
            ci_high=float(comp.ci_high[mi, ri, k]), rank=float(comp.rank[mi, ri, k]),
            best=bool(comp.best[mi, ri, k]), mean_rank=float(comp.mean_rank[mi, ri]),
            reference=comp.reference, delta_pauc=float(comp.delta[mi, ri, k]),
            delta_ci_low=float(comp.delta_low[mi, ri, k]),
            delta_ci_high=float(comp.delta_high[mi, ri, k]),
            p_value=float(comp.p_value[mi, ri, k])))
  return out

