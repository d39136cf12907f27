"""The evaluation report: edc.csv, pauc.csv, pauc_diff.csv, summary.json, summary.md, the
scores of every benchmark and PNG plots (docs/evaluation.md).

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
  plots/       edc_<benchmark>_<fr>_<mode>.png (one panel per FMR: exits faint, fusions and
               ATTN bold, quality methods dash-dotted, random and oracle dashed/dotted), pauc_vs_gflops_<fr>_<mode>.png, and
               attention_<benchmark>_<model>.png (highest- and lowest-quality images)
The per-group files are exfiqa_jax/report/groups.py's.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

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
def _style(col: QualityColumn, num_exits: int, order: int = 0) -> dict[str, Any]:
  """How a column's curve is drawn; `order` = its place among the score-file columns."""
  if col.kind == "exit":
    return dict(lw=0.9, alpha=0.25 + 0.45 * (col.exit or 1) / max(num_exits, 1), color="C0")
  if col.kind == "attn":
    bold = col.exit == num_exits
    return dict(lw=2.2 if bold else 0.8, alpha=1.0 if bold else 0.2, color="C3")
  if col.kind == "fusion":
    return dict(lw=2.2, alpha=1.0,
                color="C2" if columns.base_name(col.name) == columns.EX_FIQA_F else "C1")
  if col.kind == "method":
    index = columns.METHOD_COLUMNS.index(columns.base_name(col.name))
    return dict(lw=1.8, alpha=1.0, color=METHOD_COLORS[index % len(METHOD_COLORS)], ls="-.")
  if col.kind == "external":            # score files: dashed, a colour of their own each
    return dict(lw=1.8, alpha=1.0, color=EXTERNAL_COLORS[order % len(EXTERNAL_COLORS)],
                ls=(0, (5, 1.5)))
  if col.kind == columns.RANDOM:
    return dict(lw=1.6, alpha=0.9, color="k", ls="--")
  return dict(lw=1.6, alpha=0.9, color="C7", ls=":")


_BANDED = ("fusion", "method", "external", columns.RANDOM, columns.ORACLE)   # drawn with their CI band


def _labelled(col: QualityColumn, num_exits: int) -> bool:
  return col.kind in _BANDED or (col.exit in (1, num_exits))


def plot_edc(path: str, result: BenchmarkEval, mode: str,
             band: tuple[np.ndarray, np.ndarray] | None = None) -> str:
  """EDC curves of one benchmark and mode, one panel per FMR; band = bootstrap (low, high)
  [S, F, R] FNMR per level, drawn around the fusions, the last exit, the methods and the
  baselines."""
  m = result.modes[mode]
  fmrs = list(result.fmrs)
  fig = plots.figure(4.2 * len(fmrs), 3.6)
  depth = {c.model: max([x.exit or 0 for x in result.columns if x.model == c.model] + [1])
           for c in result.columns}
  x = np.asarray(m.curves.discard)
  order = {c.name: k for k, c in enumerate(c for c in result.columns if c.kind == "external")}
  for f, fmr in enumerate(fmrs):
    ax = fig.add_subplot(1, len(fmrs), f + 1)
    for s, col in enumerate(result.columns):
      L = depth.get(col.model, 1)
      style = _style(col, L, order.get(col.name, 0))
      ax.plot(x, m.curves.fnmr[s, f], label=col.name if _labelled(col, L) else None, **style)
      if band is not None and (col.kind in _BANDED or (col.kind == "exit" and col.exit == L)):
        lo, hi = band[0][s, f], band[1][s, f]
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
          ax.fill_between(x, np.where(ok, lo, 0), np.where(ok, hi, 0), where=ok,
                          color=style["color"], alpha=0.12, lw=0)
    ax.axvline(m.limit, color="0.6", lw=0.6, ls=":")
    ax.set_title(f"{result.benchmark}  FMR {float(fmr):.0e}  ({mode})", fontsize=9)
    ax.set_xlabel("fraction of pairs discarded" if mode == "fiqa"
                  else "fraction of genuine comparisons discarded", fontsize=8)
    ax.set_ylabel("FNMR", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if f == len(fmrs) - 1:
      ax.legend(fontsize=6, loc="upper right")
  return plots.save(fig, path)


def plot_pauc_vs_gflops(path: str, results: Sequence[BenchmarkEval], mode: str,
                        gflops: Mapping[str, tuple[np.ndarray, float]], fmr_index: int = -1
                        ) -> str:
  """pAUC per exit against that exit's GFLOPs (one line per benchmark × quality model);
  the fusions are drawn as markers at the fusion's cost, random as a dashed level."""
  fig = plots.figure(6.0, 4.2)
  ax = fig.add_subplot(1, 1, 1)
  k, fmr = 0, float("nan")
  for r in results:
    if mode not in r.modes:
      continue
    m = r.modes[mode]
    f = fmr_index % len(r.fmrs)
    for model, (g, g_fuse) in gflops.items():
      idx = [(c.exit, s) for s, c in enumerate(r.columns) if c.kind == "exit" and c.model == model]
      if not idx:
        continue
      idx.sort()
      color = f"C{k % 10}"
      k += 1
      label = r.benchmark if len(gflops) == 1 else f"{r.benchmark} {model}"
      xs, ys = [g[e - 1] for e, _ in idx], np.array([m.pauc[s, f] for _, s in idx])
      lo = np.array([m.ci_low[s, f] for _, s in idx])
      hi = np.array([m.ci_high[s, f] for _, s in idx])
      if np.all(np.isfinite(lo)) and np.all(np.isfinite(hi)):     # bootstrap error bars
        ax.errorbar(xs, ys, yerr=[np.maximum(ys - lo, 0), np.maximum(hi - ys, 0)], fmt="o-",
                    ms=3, capsize=2, lw=1, color=color, label=label)
      else:
        ax.plot(xs, ys, "o-", ms=3, color=color, label=label)
      for s, c in enumerate(r.columns):
        if c.kind == "fusion" and c.model == model:
          y, lo, hi = m.pauc[s, f], m.ci_low[s, f], m.ci_high[s, f]
          yerr = ([[max(y - lo, 0)], [max(hi - y, 0)]] if np.isfinite(lo) and np.isfinite(hi)
                  else None)
          fw = columns.base_name(c.name) == columns.EX_FIQA_FW
          ax.errorbar([g_fuse], [y], yerr=yerr, fmt="*" if fw else "P",
                      ms=9, capsize=2, color=color)
      if columns.RANDOM in r.names:
        ax.axhline(m.pauc[r.names.index(columns.RANDOM), f], color=color, ls="--", lw=0.8,
                   alpha=0.6)
    fmr = float(r.fmrs[f])
  ax.set_xlabel("GFLOPs per image (exit l)")
  ax.set_ylabel("pAUC-EDC")
  ax.set_title(f"pAUC vs GFLOPs, FMR {fmr:.0e} ({mode}); ★ EX-FIQA-FW, + EX-FIQA-F, "
               "-- random" if k else "pAUC vs GFLOPs (no exit columns)", fontsize=8)
  ax.grid(alpha=0.3)
  if k:
    ax.legend(fontsize=7)
  return plots.save(fig, path)


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
  """<output>/<benchmark>/scores_<model>.csv in the scores.csv contract (docs/evaluation.md)."""
  for bench, per_model in run.quality.items():
    for spec in quality:
      st = per_model[spec.name]
      files.write_text(
          os.path.join(output, files.slug(bench), f"scores_{files.slug(spec.name)}.csv"),
          tables.score_table(list(st["name"]), st.arrays, "exit_scores" in st.arrays))


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
