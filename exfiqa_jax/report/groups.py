"""The per-group EDC report (docs/evaluation.md, "Per-group EDC"): edc_groups.csv,
pauc_groups.csv, the summary.md section and summary.json entries, one plot per grouping.

The numbers come from exfiqa_jax/evaluation/groups.py (`GroupEval`); this module only writes them.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from exfiqa_jax import columns, files
from exfiqa_jax.evaluation.groups import GroupEval
from exfiqa_jax.evaluation.results import OTHER_METHODS, BenchmarkEval
from exfiqa_jax.report import plots, tables

GAP = "gap"                # the group name of the gap rows in edc_groups.csv / pauc_groups.csv
EDC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "grouping", "group", "fmr", "discard",
               "fnmr", "threshold", "n_genuine", "n_impostor")
PAUC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "grouping", "group", "fmr", "limit",
                "pauc", "n_pairs", "n_genuine", "n_impostor")


# ------------------------------------------------------------------------------------------
def edc_rows(ge: GroupEval) -> list[dict[str, Any]]:
  """edc_groups.csv rows: one per group × quality × FMR × discard, then the gap rows
  (group "gap": fnmr = max − min over the groups; threshold and counts empty)."""
  base = dict(benchmark=ge.benchmark, fr_model=ge.fr_model, mode=ge.mode, grouping=ge.grouping)
  rows, gap = [], ge.gap_fnmr
  for s, name in enumerate(ge.names):
    for f, fmr in enumerate(ge.fmrs):
      for r, disc in enumerate(ge.discard):
        for g, group in enumerate(ge.groups):
          rows.append(dict(base, quality=name, group=group, fmr=float(fmr), discard=float(disc),
                           fnmr=ge.fnmr[g, s, f, r], threshold=ge.threshold[g, s, f, r],
                           n_genuine=ge.n_genuine[g, s, r], n_impostor=ge.n_impostor[g, s, r]))
        rows.append(dict(base, quality=name, group=GAP, fmr=float(fmr), discard=float(disc),
                         fnmr=gap[s, f, r], threshold="", n_genuine="", n_impostor=""))
  return rows


def pauc_rows(ge: GroupEval) -> list[dict[str, Any]]:
  """pauc_groups.csv rows: one per group × quality × FMR, then the gap row (max − min)."""
  base = dict(benchmark=ge.benchmark, fr_model=ge.fr_model, mode=ge.mode, grouping=ge.grouping,
              limit=ge.limit)
  rows, gap = [], ge.gap_pauc
  for s, name in enumerate(ge.names):
    for f, fmr in enumerate(ge.fmrs):
      for g, group in enumerate(ge.groups):
        rows.append(dict(base, quality=name, group=group, fmr=float(fmr), pauc=ge.pauc[g, s, f],
                         n_pairs=ge.n_pairs[g], n_genuine=ge.n_genuine_pairs[g],
                         n_impostor=ge.n_impostor_pairs[g]))
      rows.append(dict(base, quality=name, group=GAP, fmr=float(fmr), pauc=gap[s, f],
                       n_pairs="", n_genuine="", n_impostor=""))
  return rows


def _result_for(ge: GroupEval, results: Sequence[BenchmarkEval]) -> BenchmarkEval | None:
  return next((r for r in results if r.benchmark == ge.benchmark and r.fr_model == ge.fr_model
               and ge.mode in r.modes), None)


def table_fmr_index(fmrs: np.ndarray) -> int:
  """The FMR of the papers' tables (1e-3) when evaluated, else the middle one."""
  close = np.flatnonzero(np.isclose(np.asarray(fmrs, float), 1e-3))
  return int(close[0]) if close.size else len(fmrs) // 2


def best_and_last_exit(ge: GroupEval, results: Sequence[BenchmarkEval]) -> list[int]:
  """Column rows of the best exit (lowest whole-benchmark pAUC at the table FMR) and the last
  exit of the same model; [] when there are no exit columns."""
  exits = [s for s, c in enumerate(ge.columns) if c.kind == "exit"]
  if not exits:
    return []
  f = table_fmr_index(ge.fmrs)
  result = _result_for(ge, results)
  overall = (result.modes[ge.mode].pauc[:, f] if result is not None
             else np.nanmean(ge.pauc[:, :, f], axis=0))
  best = min(exits, key=lambda s: (np.nan_to_num(overall[s], nan=np.inf), s))
  model = ge.columns[best].model
  last = max((s for s in exits if ge.columns[s].model == model),
             key=lambda s: ge.columns[s].exit or 0)
  return [best] if last == best else [best, last]


def markdown(evals: Sequence[GroupEval], results: Sequence[BenchmarkEval]) -> list[str]:
  """summary.md lines: per benchmark × FR × mode × grouping, pAUC ×1e3 per group of the best
  and last exit (and every method and score-file column, and random) at every FMR, and the gap row."""
  if not evals:
    return []
  lines = ["## Per-group EDC", "",
           "A pair counts for a group when both images (IJB-C: both templates) are in it; pairs "
           "across groups are left out. pAUC-EDC ×1e3 of the group's own EDC; gap = max − min "
           "over the groups (docs/evaluation.md, Per-group EDC).", ""]
  for ge in evals:
    show = best_and_last_exit(ge, results) + [s for s, c in enumerate(ge.columns)
                                              if c.kind in OTHER_METHODS + (columns.RANDOM,)]
    if not show:
      show = list(range(len(ge.columns)))
    lines.append(f"### {ge.benchmark} by {ge.grouping} (FR `{ge.fr_model}`, mode `{ge.mode}`, "
                 f"limit {ge.limit:g})")
    lines.append("")
    header = ["group", "pairs (genuine / impostor)"] + [
        f"{ge.names[s]} @FMR {float(fmr):.0e}" for fmr in ge.fmrs for s in show]
    lines += tables.markdown_table(header, (
        [group, f"{ge.n_genuine_pairs[g]} / {ge.n_impostor_pairs[g]}"]
        + [f"{1e3 * ge.pauc[g, s, f]:.2f}" if np.isfinite(ge.pauc[g, s, f]) else "n/a"
           for f in range(len(ge.fmrs)) for s in show]
        for g, group in enumerate(ge.groups)))
    gap = ge.gap_pauc
    cells = [f"{1e3 * gap[s, f]:.2f}" if np.isfinite(gap[s, f]) else "n/a"
             for f in range(len(ge.fmrs)) for s in show]
    lines += ["| **gap** (max − min) | | " + " | ".join(cells) + " |", ""]
  return lines


def summary(evals: Sequence[GroupEval]) -> list[dict[str, Any]]:
  """summary.json entries: counts per group and every pAUC per group, with the gap."""
  out = []
  for ge in evals:
    gap = ge.gap_pauc
    out.append({
        "benchmark": ge.benchmark, "fr_model": ge.fr_model, "mode": ge.mode,
        "grouping": ge.grouping, "limit": ge.limit,
        "groups": {g: {"n_pairs": int(ge.n_pairs[k]), "n_genuine": int(ge.n_genuine_pairs[k]),
                       "n_impostor": int(ge.n_impostor_pairs[k])}
                   for k, g in enumerate(ge.groups)},
        "pauc": {f"{float(fmr):g}": {name: {**{g: _json(ge.pauc[k, s, f])
                                               for k, g in enumerate(ge.groups)},
                                            GAP: _json(gap[s, f])}
                                     for s, name in enumerate(ge.names)}
                 for f, fmr in enumerate(ge.fmrs)}})
  return out


def _json(v) -> float | None:
  return float(v) if np.isfinite(v) else None


def plot(path: str, ge: GroupEval, results: Sequence[BenchmarkEval]) -> str:
  """Per-group EDC curves of the best exit (solid) and the last exit (dashed), one panel per
  FMR, one colour per group; one legend below the panels (groups by colour, columns by line
  style); a group's curve that stops early is marked and said."""
  from matplotlib.lines import Line2D
  exits = best_and_last_exit(ge, results)
  show = exits or [0]
  notes = (["best exit", "last exit"] if len(exits) == 2 else ["best = last exit"] if exits
           else [""])
  fig = plots.figure(4.2 * len(ge.fmrs), 3.4)
  styles = ["-", "--"]
  for f, fmr in enumerate(ge.fmrs):
    ax = fig.add_subplot(1, len(ge.fmrs), f + 1)
    ends = []
    for g, group in enumerate(ge.groups):
      for k, s in enumerate(show):
        y = ge.fnmr[g, s, f]
        if np.isfinite(y).any():
          ax.plot(ge.discard, y, ls=styles[k % 2], color=f"C{g % 10}", lw=1.4)
          end = plots.curve_end(ge.discard, y, ge.n_genuine[g, s], ge.n_impostor[g, s])
          if end is not None:
            ends.append((f"{group} · {ge.names[s]}", f"C{g % 10}", end))
    plots.limit_line(ax, ge.limit)
    plots.axes_text(ax, "fraction of the group's pairs discarded" if ge.mode == "fiqa"
                    else "fraction of the group's genuine comparisons discarded", "FNMR",
                    f"{ge.benchmark} by {ge.grouping}, FMR {float(fmr):.0e} ({ge.mode})",
                    plots.mark_ends(ax, ends))
  handles = [Line2D([], [], color=f"C{g % 10}", lw=1.4) for g in range(len(ge.groups))]
  handles += [Line2D([], [], color="0.3", lw=1.4, ls=styles[k % 2]) for k in range(len(show))]
  plots.shared_legend(fig, handles, list(ge.groups) + [
      f"{ge.names[s]} ({notes[k]})" if notes[k] else ge.names[s] for k, s in enumerate(show)])
  return plots.save(fig, path)


def write(output: str, evals: Sequence[GroupEval], results: Sequence[BenchmarkEval],
          with_plots: bool = True) -> dict[str, Any]:
  """edc_groups.csv, pauc_groups.csv and plots/edc_groups_<bench>_<fr>_<mode>_<grouping>.png."""
  if not evals:
    return {}
  paths: dict[str, Any] = {"edc_groups": os.path.join(output, "edc_groups.csv"),
                           "pauc_groups": os.path.join(output, "pauc_groups.csv")}
  tables.write_csv(paths["edc_groups"], [r for ge in evals for r in edc_rows(ge)], EDC_COLUMNS)
  tables.write_csv(paths["pauc_groups"], [r for ge in evals for r in pauc_rows(ge)],
                   PAUC_COLUMNS)
  if with_plots:
    paths["group_plots"] = [plot(os.path.join(output, "plots", "edc_groups_" + "_".join(
        files.slug(x) for x in (ge.benchmark, ge.fr_model, ge.mode, ge.grouping)) + ".png"),
        ge, results) for ge in evals]
  return paths
