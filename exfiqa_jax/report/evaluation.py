"""The evaluation report: edc.csv, pauc.csv, pauc_diff.csv, summary.json, summary.md, the
scores of every benchmark and the plots, each a PNG with a PDF beside it (docs/evaluation.md).

Inputs are an `EvalRun` (exfiqa_jax/evaluation/pipeline.py): per benchmark × FR model a
`BenchmarkEval` with the quality columns evaluated and, per EDC mode, the engine's
`edc.EdcCurves` plus the pAUC and its bootstrap CI. Numbers are written exactly as the engine
produced them (float repr), so the files equal `exfiqa_jax.metrics.edc`.

  <bench>/scores_<model>.csv  the scores.csv contract (exfiqa_jax/report/tables.py, score_table)
  edc.csv      benchmark, fr_model, quality, mode, fmr, discard, fnmr, threshold, n_genuine,
               n_impostor
  pauc.csv     benchmark, fr_model, quality, mode, fmr, limit, pauc, ci_low, ci_high
               (raw area; the papers print ×1e3)
  pauc_diff.csv benchmark, fr_model, mode, fmr, quality_a, quality_b, delta_pauc, ci_low,
               ci_high, p_value (paired bootstrap; exfiqa_jax/metrics/paired.py)
  summary.json every pAUC with its CI, the best column per (benchmark, FR model, mode, FMR),
               plus whatever the caller adds (timings, demo targets, Spearman correlations)
  summary.md   the papers' table: rows = quality columns, columns = benchmark × FMR, pAUC ×1e3,
               best per column in bold (baselines such as `random` are never "best")
  plots/       edc_<benchmark>_<fr>_<mode>.png (one panel per FMR, one legend below: exits and
               ATTN thin, light to dark with depth, fusions solid, methods dash-dotted, random
               and oracle dashed/dotted, two highlighted() columns bold with their bands),
               pauc_vs_gflops_<fr>_<mode>.png (×1e3 at the tables' FMR), and
               attention_<benchmark>_<model>.png (highest- and lowest-quality images)
The per-group files are exfiqa_jax/report/groups.py's.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
from absl import logging

from exfiqa_jax import columns, files, parallel
from exfiqa_jax.evaluation.attention import AttentionExample
from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.evaluation.pipeline import EvalRun, QualitySpec
from exfiqa_jax.evaluation.results import BenchmarkEval, QualityColumn, best_index
from exfiqa_jax.evaluation import comparison as comparison_lib
from exfiqa_jax.evaluation import paired_columns as paired_lib
from exfiqa_jax.report import comparison as comparison_report
from exfiqa_jax.report import groups as groups_report
from exfiqa_jax.report import plots, tables

EDC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "fmr", "discard", "fnmr",
               "threshold", "n_genuine", "n_impostor")
PAUC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "fmr", "limit", "pauc", "ci_low",
                "ci_high")
METHOD_COLORS = ("C4", "C5", "C6", "C8", "C9")     # the quality methods' curves, by column
EXTERNAL_COLORS = ("tab:olive", "tab:brown", "tab:pink", "tab:cyan", "navy", "teal")  # score files


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
def edc_rows(result: BenchmarkEval) -> list[dict[str, Any]]:
  rows = []
  for mode, m in result.modes.items():
    for row in m.curves.rows(result.benchmark, result.fr_model, result.names):
      row["mode"] = mode
      rows.append(row)
  return rows


def pauc_rows(result: BenchmarkEval) -> list[dict[str, Any]]:
  rows = []
  for mode, m in result.modes.items():
    for s, name in enumerate(result.names):
      for f, fmr in enumerate(result.fmrs):
        rows.append(dict(benchmark=result.benchmark, fr_model=result.fr_model, quality=name,
                         mode=mode, fmr=float(fmr), limit=float(m.limit),
                         pauc=float(m.pauc[s, f]), ci_low=float(m.ci_low[s, f]),
                         ci_high=float(m.ci_high[s, f])))
  return rows


def summary_dict(results: Sequence[BenchmarkEval], extra: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
  """Every pAUC and CI, nested benchmark → fr_model → mode → fmr → quality; and the best."""
  out: dict[str, Any] = {"benchmarks": {}, "best": []}
  for r in results:
    per_fr = out["benchmarks"].setdefault(r.benchmark, {})
    entry = per_fr.setdefault(r.fr_model, {"n_pairs": r.n_pairs, "n_genuine": r.n_genuine})
    for mode, m in r.modes.items():
      per_mode = entry.setdefault(mode, {"limit": m.limit})
      for f, fmr in enumerate(r.fmrs):
        key = f"{float(fmr):g}"
        per_mode[key] = {name: {"pauc": float(m.pauc[s, f]), "ci_low": float(m.ci_low[s, f]),
                                "ci_high": float(m.ci_high[s, f])}
                         for s, name in enumerate(r.names)}
        b = best_index(m.pauc[:, f], r.columns)
        if b is not None:
          rnd = r.names.index(columns.RANDOM) if columns.RANDOM in r.names else None
          out["best"].append({
              "benchmark": r.benchmark, "fr_model": r.fr_model, "mode": mode, "fmr": float(fmr),
              "quality": r.names[b], "pauc": float(m.pauc[b, f]),
              "ratio_to_random": (float(m.pauc[b, f] / m.pauc[rnd, f])
                                  if rnd is not None and m.pauc[rnd, f] > 0 else None)})
  if extra:
    out.update(extra)
  return out


def summary_markdown(results: Sequence[BenchmarkEval], title: str = "EDC evaluation",
                     notes: Sequence[str] = (), footer: Sequence[str] = ()) -> str:
  """Tables like the papers': one per (FR model, mode); rows = quality columns, columns =
  benchmark × FMR, pAUC-EDC ×1e3 (lower is better), best non-baseline value per column bold."""
  lines = [f"# {title}", ""]
  lines += [str(n) for n in notes]
  if notes:
    lines.append("")
  groups: dict[tuple[str, str], list[BenchmarkEval]] = {}
  for r in results:
    for mode in r.modes:
      groups.setdefault((r.fr_model, mode), []).append(r)
  for (fr, mode), rs in groups.items():
    limit = rs[0].modes[mode].limit
    lines.append(f"## FR model `{fr}`, mode `{mode}`: pAUC-EDC ×1e3 up to {limit:g} discard "
                 "(lower is better; **bold** = best per column)")
    lines.append("")
    header, cells_by_col, names = ["quality"], [], []
    for r in rs:
      for f, fmr in enumerate(r.fmrs):
        header.append(f"{r.benchmark} @FMR {float(fmr):.0e}")
        m = r.modes[mode]
        b = best_index(m.pauc[:, f], r.columns)
        cells_by_col.append({name: (f"**{1e3 * m.pauc[s, f]:.2f}**" if s == b
                                    else f"{1e3 * m.pauc[s, f]:.2f}")
                             for s, name in enumerate(r.names)})
      for name in r.names:
        if name not in names:
          names.append(name)
    lines += tables.markdown_table(header, ([name] + [col.get(name, "") for col in cells_by_col]
                                            for name in names))
    lines.append("")
  lines += [str(n) for n in footer]
  return "\n".join(lines) + "\n"


def write_tables(output: str, results: Sequence[BenchmarkEval],
                 extra: Mapping[str, Any] | None = None, title: str = "EDC evaluation",
                 notes: Sequence[str] = (), footer: Sequence[str] = ()) -> dict[str, str]:
  """edc.csv, pauc.csv, summary.json and summary.md in `output` (atomic)."""
  paths = {k: os.path.join(output, f) for k, f in (("edc", "edc.csv"), ("pauc", "pauc.csv"),
                                                    ("json", "summary.json"),
                                                    ("md", "summary.md"))}
  tables.write_csv(paths["edc"], (row for r in results for row in edc_rows(r)), EDC_COLUMNS)
  tables.write_csv(paths["pauc"], (row for r in results for row in pauc_rows(r)), PAUC_COLUMNS)
  files.write_json(paths["json"], summary_dict(results, extra))
  files.write_text(paths["md"], summary_markdown(results, title, notes, footer))
  return paths


def write_paired(output: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """pauc_diff.csv (atomic; header only when there was no bootstrap)."""
  return tables.write_csv(os.path.join(output, "pauc_diff.csv"), rows, paired_lib.COLUMNS)


def paired_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """"Paired comparisons" section: every comparison not against `random` (fusions and the best
  exit against the last exit, our best against each method), Δ pAUC ×1e3 with its interval and p; the exit-vs-random ones
  summarised in one line (all of them are in pauc_diff.csv)."""
  if not rows:
    return []
  vs_random = [r for r in rows if r["quality_b"] == columns.RANDOM]
  lines = ["## Paired comparisons: Δ pAUC-EDC ×1e3 = a − b (paired bootstrap; < 0: a better)",
           ""]
  lines += tables.markdown_table(
      ["benchmark", "FR model", "mode", "FMR", "a", "b", "Δ ×1e3", "interval ×1e3", "p"],
      ([r["benchmark"], r["fr_model"], r["mode"], f"{r['fmr']:.0e}", r["quality_a"],
        r["quality_b"], f"{1e3 * r['delta_pauc']:.3f}",
        f"[{1e3 * r['ci_low']:.3f}, {1e3 * r['ci_high']:.3f}]", f"{r['p_value']:.3g}"]
       for r in rows if r["quality_b"] != columns.RANDOM))
  if vs_random:
    better = sum(1 for r in vs_random if r["p_value"] < 0.05 and r["delta_pauc"] < 0)
    lines += ["", f"Every exit against `{columns.RANDOM}`: {len(vs_random)} comparisons, {better} "
              "significantly better at p < 0.05 (pauc_diff.csv)."]
  return lines + [""]


def sanity_markdown(sanity: Sequence[Mapping[str, Any]]) -> list[str]:
  """One "FR sanity" line, per FR model: 10-fold accuracy per pair set, TAR@FAR per template
  set."""
  if not sanity:
    return []
  per_fr: dict[str, list[str]] = {}
  for s in sanity:
    if s.get("kind") == "tar_at_far":
      tars = ", ".join(f"TAR@FAR={k.split('=', 1)[1]} {100 * v:.2f} %"
                       for k, v in s.items() if k.startswith("tar@far="))
      per_fr.setdefault(s["fr_model"], []).append(f"{s['benchmark']} ({tars})")
    else:
      per_fr.setdefault(s["fr_model"], []).append(
          f"{s['benchmark']} (10-fold accuracy {100 * s['accuracy_10fold']:.2f} %)")
  return ["FR sanity (is each FR model, the data and the channel order right?): "
          + "; ".join(f"`{fr}`: {', '.join(parts)}" for fr, parts in per_fr.items()) + ".", ""]


def gflops_markdown(gflops: Mapping[str, tuple[np.ndarray, float]]) -> list[str]:
  """A GFLOPs-per-exit table (rows = quality models)."""
  if not gflops:
    return []
  depth = max(len(g) for g, _ in gflops.values())
  header = ["model"] + [f"exit {l}" for l in range(1, depth + 1)] + ["fusion"]
  return ["## GFLOPs per image at each exit", ""] + tables.markdown_table(header, (
      [name] + [f"{x:.2f}" for x in g] + [""] * (depth - len(g)) + [f"{fuse:.2f}"]
      for name, (g, fuse) in gflops.items())) + [""]


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------
EXIT_MAPS = ("Blues", "Greys", "Purples", "Greens")   # exits per quality model: darker = deeper
ATTN_MAPS = ("Reds", "Oranges", "RdPu", "YlOrBr")    # attn_1..attn_L likewise


def _shade(cmap: str, exit: int | None, depth: int):
  """Colour of exit `exit` of `depth` in a sequential map: light (exit 1) to dark (exit L)."""
  from matplotlib import colormaps
  return colormaps[cmap](0.95 - 0.6 * (depth - (exit or depth)) / max(depth - 1, 1))


def _style(col: QualityColumn, depth: int, order: int, model: int) -> dict[str, Any]:
  """How a column's curve is drawn: `order` = its place among the score-file columns, `model`
  = its quality model's place (exit and attn colour maps)."""
  if col.kind == "exit":
    return dict(lw=0.9, color=_shade(EXIT_MAPS[model % len(EXIT_MAPS)], col.exit, depth))
  if col.kind == "attn":
    return dict(lw=1.3 if col.exit == depth else 0.8,
                color=_shade(ATTN_MAPS[model % len(ATTN_MAPS)], col.exit, depth))
  if col.kind == "fusion":
    return dict(lw=1.6, color="C2" if columns.base_name(col.name) == columns.EX_FIQA_F else "C1")
  if col.kind == "method":
    index = columns.METHOD_COLUMNS.index(columns.base_name(col.name))
    return dict(lw=1.4, color=METHOD_COLORS[index % len(METHOD_COLORS)], ls="-.")
  if col.kind == "external":            # score files: dashed, a colour of their own each
    return dict(lw=1.4, color=EXTERNAL_COLORS[order % len(EXTERNAL_COLORS)], ls=(0, (5, 1.5)))
  if col.kind == columns.RANDOM:
    return dict(lw=1.2, color="k", ls="--")
  return dict(lw=1.6, color="0.45", ls=":")


OURS = ("exit", "fusion", "attn")       # a quality model's own columns; the rest: other methods
BOLD_COLORS = {"exit": ("C0", "midnightblue"), "attn": ("C3", "darkred")}   # 1st, 2nd bold one


def highlighted(result: BenchmarkEval, mode: str) -> dict[int, str]:
  """The (at most two) columns drawn bold with their bootstrap band, {row: legend note}: the
  best non-baseline column at the tables' FMR (1e-3 when evaluated) and what it is judged
  against, the best column of the other side (other methods against a quality model's own
  columns, or back), else the full-depth exit of its model."""
  m, cols = result.modes[mode], result.columns
  f = groups_report.table_fmr_index(result.fmrs)
  best = best_index(m.pauc[:, f], cols)
  if best is None:
    return {}
  out = {best: f"best at FMR {float(result.fmrs[f]):.0e}"}
  ours = cols[best].kind in OURS
  rival = best_index(np.where([(c.kind in OURS) != ours for c in cols], m.pauc[:, f], np.nan),
                     cols)
  if rival is not None:
    out[rival] = "best other method" if ours else "best exit or fusion"
    return out
  last = max((s for s, c in enumerate(cols) if c.kind == "exit" and c.model == cols[best].model),
             key=lambda s: cols[s].exit or 0, default=None)
  if last is not None and last != best:
    out[last] = "full depth"
  return out


def _legend_entries(result: BenchmarkEval, lines: Mapping[int, Any], bold: Mapping[int, str],
                    banded: bool) -> tuple[list[Any], list[str]]:
  """The shared legend: one entry per exit range and per ATTN range (light to dark lines side
  by side), one per other column (a bold one says why), the band's meaning."""
  from matplotlib.patches import Patch
  handles, labels, ranges = [], [], {}
  for s, col in enumerate(result.columns):
    if col.kind in ("exit", "attn") and s not in bold:
      ranges.setdefault((col.kind, col.model), []).append(s)
      continue
    handles.append(lines[s])
    labels.append(col.name + (f" ({bold[s]})" if s in bold else ""))
  for rows in ranges.values():
    first, last = result.names[rows[0]], result.names[rows[-1]]
    picks = sorted({rows[0], rows[len(rows) // 2], rows[-1]})
    handles.append(tuple(lines[s] for s in picks))
    labels.append(first if len(rows) == 1 else f"{first} … {last} (darker = deeper)")
  if banded:
    handles.append(Patch(color="0.5", alpha=0.25, lw=0))
    labels.append("bootstrap interval (bold curves)")
  return handles, labels


def plot_edc(path: str, result: BenchmarkEval, mode: str,
             band: tuple[np.ndarray, np.ndarray] | None = None) -> str:
  """EDC curves of one benchmark and mode, one panel per FMR, one legend below them all: exits
  and ATTN thin (light to dark with depth), fusions solid, methods dash-dotted, score files
  dashed, random and oracle dashed/dotted; the highlighted() columns bold with their bootstrap
  band (`band` = (low, high) [S, F, R]); a curve that stops early is marked and said."""
  m = result.modes[mode]
  fmrs = list(result.fmrs)
  fig = plots.figure(4.2 * len(fmrs), 3.4)
  depth = {c.model: max([x.exit or 0 for x in result.columns if x.model == c.model] + [1])
           for c in result.columns}
  models = {k: i for i, k in enumerate(dict.fromkeys(
      c.model for c in result.columns if c.kind in ("exit", "attn")))}
  order = {c.name: k for k, c in enumerate(c for c in result.columns if c.kind == "external")}
  bold = highlighted(result, mode)
  x = np.asarray(m.curves.discard)
  lines: dict[int, Any] = {}
  for f, fmr in enumerate(fmrs):
    ax = fig.add_subplot(1, len(fmrs), f + 1)
    ends = []
    for s, col in enumerate(result.columns):
      style = _style(col, depth.get(col.model, 1), order.get(col.name, 0),
                     models.get(col.model, 0))
      if s in bold:
        rank = list(bold).index(s)
        style.update(lw=2.2, zorder=4, **({"color": BOLD_COLORS[col.kind][rank]}
                                          if col.kind in BOLD_COLORS else {}))
      y = m.curves.fnmr[s, f]
      lines[s], = ax.plot(x, y, **style)
      end = plots.curve_end(x, y, m.curves.n_genuine[s], m.curves.n_impostor[s])
      if end is not None:
        ends.append((col.name, style["color"], end))
      if band is not None and s in bold:
        lo, hi = band[0][s, f], band[1][s, f]
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
          ax.fill_between(x, np.where(ok, lo, 0), np.where(ok, hi, 0), where=ok,
                          color=style["color"], alpha=0.15, lw=0, zorder=2)
    plots.limit_line(ax, m.limit)
    plots.axes_text(ax, "fraction of pairs discarded" if mode == "fiqa"
                    else "fraction of genuine comparisons discarded", "FNMR",
                    f"{result.benchmark}, FMR {float(fmr):.0e} ({mode})", plots.mark_ends(ax, ends))
  handles, labels = _legend_entries(result, lines, bold, band is not None)
  plots.shared_legend(fig, handles, labels)
  return plots.save(fig, path)


def plot_pauc_vs_gflops(path: str, results: Sequence[BenchmarkEval], mode: str,
                        gflops: Mapping[str, tuple[np.ndarray, float]],
                        fmr_index: int | None = None) -> str:
  """pAUC ×1e3 per exit against that exit's GFLOPs at the tables' FMR (1e-3 when evaluated;
  `fmr_index` picks another), one line per benchmark × quality model with bootstrap error bars;
  the fusions at the fusion's cost, concentric so neither hides the other (EX-FIQA-F a small
  filled + with narrow caps, EX-FIQA-FW a large hollow diamond with wide caps), random as a
  dashed level in the line's colour."""
  from matplotlib.lines import Line2D
  fig = plots.figure(6.0, 4.0)
  ax = fig.add_subplot(1, 1, 1)
  k, fmr, handles, labels = 0, float("nan"), [], []
  for r in results:
    if mode not in r.modes:
      continue
    m = r.modes[mode]
    f = groups_report.table_fmr_index(r.fmrs) if fmr_index is None else fmr_index % len(r.fmrs)
    fmr = float(r.fmrs[f])
    for model, (g, g_fuse) in gflops.items():
      idx = sorted((c.exit, s) for s, c in enumerate(r.columns)
                   if c.kind == "exit" and c.model == model)
      if not idx:
        continue
      color = f"C{k % 10}"
      k += 1
      xs = [g[e - 1] for e, _ in idx]
      rows = [s for _, s in idx]
      line = _errorbar(ax, xs, m, rows, f, color, "o-", ms=3, lw=1)
      handles.append(line)
      labels.append(r.benchmark if len(gflops) == 1 else f"{r.benchmark} {model}")
      for s, c in enumerate(r.columns):
        if c.kind == "fusion" and c.model == model:
          fw = columns.base_name(c.name) == columns.EX_FIQA_FW
          _errorbar(ax, [g_fuse], m, [s], f, color, "D" if fw else "P", ms=11 if fw else 7,
                    mfc="none" if fw else color, mew=1.5 if fw else 1.0, lw=1,
                    capsize=6 if fw else 2, zorder=3)
      if columns.RANDOM in r.names:
        ax.axhline(1e3 * m.pauc[r.names.index(columns.RANDOM), f], color=color, ls="--",
                   lw=0.8, alpha=0.7)
  if k:
    handles += [Line2D([], [], ls="none", marker="P", ms=7, color="0.2"),
                Line2D([], [], ls="none", marker="D", ms=9, mfc="none", mew=1.5, color="0.2"),
                Line2D([], [], ls="--", lw=0.8, color="0.2")]
    labels += [columns.EX_FIQA_F, columns.EX_FIQA_FW, f"{columns.RANDOM} (line's colour)"]
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0),
              frameon=False)
  plots.axes_text(ax, "GFLOPs per image (exit l; fusions: all exits)", "pAUC-EDC ×1e3",
                  f"pAUC-EDC vs GFLOPs, FMR {fmr:.0e} ({mode})" if k
                  else "pAUC vs GFLOPs (no exit columns)")
  return plots.save(fig, path)


def _errorbar(ax, xs: Sequence[float], m, rows: Sequence[int], f: int, color: str, fmt: str,
              **kw):
  """pAUC ×1e3 of `rows` at FMR index f, with bootstrap error bars when every CI is finite."""
  ys = np.array([1e3 * m.pauc[s, f] for s in rows])
  lo = np.array([1e3 * m.ci_low[s, f] for s in rows])
  hi = np.array([1e3 * m.ci_high[s, f] for s in rows])
  yerr = ([np.maximum(ys - lo, 0), np.maximum(hi - ys, 0)]
          if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)) else None)
  return ax.errorbar(xs, ys, yerr=yerr, fmt=fmt, color=color, **{"capsize": 2, **kw})


def write_plots(output: str, results: Sequence[BenchmarkEval],
                gflops: Mapping[str, tuple[np.ndarray, float]] | None = None,
                bands: Mapping[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] | None = None
                ) -> list[str]:
  """EDC curve plots per benchmark/mode (with CI bands from `bands`, keyed (benchmark,
  fr_model, mode)) and pAUC-vs-GFLOPs plots (error bars = the pAUC CIs) per FR model/mode."""
  folder = os.path.join(output, "plots")
  written = []
  for r in results:
    for mode in r.modes:
      written.append(plot_edc(os.path.join(
          folder, f"edc_{files.slug(r.benchmark)}_{files.slug(r.fr_model)}_{mode}.png"), r, mode,
          (bands or {}).get((r.benchmark, r.fr_model, mode))))
  if gflops:
    by_fr: dict[str, list[BenchmarkEval]] = {}
    for r in results:
      by_fr.setdefault(r.fr_model, []).append(r)
    for fr, rs in by_fr.items():
      for mode in rs[0].modes:
        written.append(plot_pauc_vs_gflops(os.path.join(
            folder, f"pauc_vs_gflops_{files.slug(fr)}_{mode}.png"), rs, mode, gflops))
  return written


def write_attention(output: str, examples: Sequence[AttentionExample]) -> list[str]:
  """plots/attention_<benchmark>_<model>.png: one row of overlays per example set."""
  return [plots.plot_attention(
      os.path.join(output, "plots",
                   f"attention_{files.slug(e.benchmark)}_{files.slug(e.model)}.png"),
      e.images, e.maps, e.scores, f"{e.benchmark}, {e.model}: last-block attention, highest "
      "(left) and lowest (right) quality", e.labels) for e in examples]


# ------------------------------------------------------------------------------------------
# The whole report
# ------------------------------------------------------------------------------------------
def write_scores(output: str, run: EvalRun, quality: Sequence[QualitySpec]) -> None:
  """<output>/<benchmark>/scores_<model>.csv in the scores.csv contract (docs/evaluation.md).
  The scores_<name>.csv of a model an earlier run had and this one has not are removed: a
  report's folder holds this run's models only (nothing else there is touched)."""
  for bench, per_model in run.quality.items():
    folder = os.path.join(output, files.slug(bench))
    written = set()
    for spec in quality:
      st = per_model[spec.name]
      written.add(f"scores_{files.slug(spec.name)}.csv")
      files.write_text(os.path.join(folder, f"scores_{files.slug(spec.name)}.csv"),
                       tables.score_table(list(st["name"]), st.arrays, "exit_scores" in st.arrays))
    for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else ():
      if re.fullmatch(r"scores_[A-Za-z0-9_.-]+\.csv", entry) and entry not in written:
        logging.info("removing %s, the scores of a model this run does not have",
                     os.path.join(folder, entry))
        os.remove(os.path.join(folder, entry))


def protocol_summary(config, benchmarks: Sequence[Benchmark]) -> dict[str, Any]:
  """summary.json: the pixel protocol of the run and of every benchmark read from files
  (docs/data.md, "Protocols: published and lossless"); nothing for in-memory arrays (demo)."""
  used = {b.name: b.protocol for b in benchmarks if b.protocol}
  return {"protocol": config.data.get("protocol", "published"), "protocols": used} if used else {}


def protocol_markdown(benchmarks: Sequence[Benchmark]) -> list[str]:
  used = sorted({b.protocol for b in benchmarks if b.protocol})
  return ([f"Pixels: protocol `{'`, `'.join(used)}` (docs/data.md, Protocols: published and "
           "lossless).", ""] if used else [])


def attention_count(config) -> int:
  """How many high- and low-quality attention examples the report draws (0: none)."""
  if not config.report.get("plots", True):
    return 0
  return int(config.report.get("attention_examples", 4))


def comparison(config, run: EvalRun) -> comparison_lib.Comparison:
  """The comparison of `run` as config.report.comparison asks (rows, reference, fmrs)."""
  c = config.report.get("comparison", {})
  return comparison_lib.build(run.results, run.samples, c.get("rows", ""),
                              c.get("reference", ""), c.get("fmrs", ""),
                              float(config.eval.get("alpha", 0.05)))


def write(config, run: EvalRun, benchmarks: Sequence[Benchmark], quality: Sequence[QualitySpec],
          examples: Sequence[AttentionExample] = (), extra: Mapping[str, Any] | None = None,
          title: str = "EDC evaluation", notes: Sequence[str] = (),
          footer: Sequence[str] = ()) -> dict[str, Any]:
  """Every output file (process 0 only); `footer` lines go under the tables of summary.md."""
  if not parallel.is_writer():
    return {}
  output, gflops = config.output, run.gflops
  summary_extra = {"fmrs": [float(f) for f in config.eval.fmrs],
                   "modes": list(config.eval.modes),
                   "pauc_limit": {m: float(config.eval.pauc_limit[m]) for m in config.eval.modes},
                   "bootstrap": int(config.eval.get("bootstrap", 0)),
                   "quality_models": {q.name: q.path for q in quality},
                   **({"score_files": {e.name: e.summary() for e in run.score_files}}
                      if run.score_files else {}),
                   "gflops_per_exit": {k: [round(float(x), 4) for x in v[0]]
                                       for k, v in gflops.items()},
                   "gflops_fusion": {k: round(v[1], 4) for k, v in gflops.items()},
                   "seconds_per_benchmark": run.seconds,
                   "bootstrap_unit": run.bootstrap_units, "fr_sanity": run.sanity,
                   "paired_comparisons": run.paired,
                   **protocol_summary(config, benchmarks),
                   **({"groups": groups_report.summary(run.groups)} if run.groups else {}),
                   **(extra or {})}
  notes = sanity_markdown(run.sanity) + list(notes)
  with_plots = bool(config.report.get("plots", True))
  comp = comparison(config, run)
  summary_extra["comparison"] = {
      "rows": comp.rows, "reference": comp.reference,
      "mean_rank": {mode: dict(zip(comp.rows, map(float, comp.mean_rank[mi])))
                    for mi, mode in enumerate(comp.modes)}}
  paths = write_tables(output, run.results, summary_extra, title, notes,
                       comparison_report.markdown(comp, level=2, with_deltas=False)
                       + ["The Δ against the reference and its p-values: comparison.md.", ""]
                       + paired_markdown(run.paired) + gflops_markdown(gflops)
                       + protocol_markdown(benchmarks)
                       + groups_report.markdown(run.groups, run.results) + list(footer))
  compared = comparison_report.write(output, comp, run.results, run.sanity, with_plots)
  paths.update({k: v for k, v in compared.items() if k != "comparison_plots"})
  if config.eval.get("paired", True):
    paths["paired"] = write_paired(output, run.paired)
  write_scores(output, run, quality)
  group_paths = groups_report.write(output, run.groups, run.results, with_plots=with_plots)
  paths.update({k: v for k, v in group_paths.items() if k != "group_plots"})
  written = list(group_paths.get("group_plots", [])) + compared["comparison_plots"]
  if with_plots:
    written += write_plots(output, run.results, gflops, run.bands)
    written += write_attention(output, examples)
  return {**paths, "plots": written}
