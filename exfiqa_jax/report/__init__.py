"""Evaluation reports: edc.csv, pauc.csv, summary.json, summary.md and PNG plots.

Inputs are `BenchmarkEval`s (one per benchmark × FR model): the quality columns evaluated and,
per EDC mode, the engine's `edc.EdcCurves` plus the pAUC and its bootstrap CI. Numbers are
written exactly as the engine produced them (float repr), so the files equal `exfiqa_jax.metrics.edc`.

  scores.csv   image, exit_1..exit_L, ex_fiqa_f, ex_fiqa_fw, attn_1..attn_L (`score_table`),
               then q100_exit_1..q100_exit_L, q100_ex_fiqa_f, q100_ex_fiqa_fw when the model
               has a 0–100 mapping (quality_mapping.json, exfiqa_jax/calibrate/calibration.py)
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
               ATTN bold, baselines dashed), pauc_vs_gflops_<fr>_<mode>.png, and
               attention_<benchmark>_<model>.png (highest- and lowest-quality images)
Plots use matplotlib's Agg canvas directly (no pyplot state), written atomically.
"""
from __future__ import annotations

import csv
import io as _io
import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from exfiqa_jax import files
from exfiqa_jax.metrics import paired as paired_lib
from exfiqa_jax.evaluation.results import RANDOM, BenchmarkEval, QualityColumn, best_index

EDC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "fmr", "discard", "fnmr",
               "threshold", "n_genuine", "n_impostor")
PAUC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "fmr", "limit", "pauc", "ci_low",
                "ci_high")
OVERLAY_ALPHA = 0.4                       # as ATTN-FIQA's published overlays (docs/methods.md)


# ------------------------------------------------------------------------------------------
# Tables
# ------------------------------------------------------------------------------------------
def _num(v: Any) -> str:
  """Exact text for a number (float repr round-trips bit for bit)."""
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  v = float(v)
  return "nan" if math.isnan(v) else repr(v)


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


def score_columns(num_exits: int, has_exits: bool) -> list[str]:
  attn = [f"attn_{l}" for l in range(1, num_exits + 1)]
  if not has_exits:
    return ["image"] + attn
  return (["image"] + [f"exit_{l}" for l in range(1, num_exits + 1)]
          + ["ex_fiqa_f", "ex_fiqa_fw"] + attn)


def score_table(names: Sequence[str], scores: dict[str, np.ndarray], has_exits: bool,
                extra: Mapping[str, np.ndarray] | None = None) -> str:
  """scores.csv text in the contract's column order (floats with 9 significant digits);
  `extra` columns ({name: [N]}, e.g. the 0–100 values q100_exit_1.., exfiqa_jax/calibrate/
  calibration.py) are appended after them in their order."""
  num_exits = scores["attn_scores"].shape[1]
  extra = dict(extra or {})
  buf = _io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(score_columns(num_exits, has_exits) + list(extra))
  for i, name in enumerate(names):
    row = []
    if has_exits:
      row += list(scores["exit_scores"][i]) + [scores["ex_fiqa_f"][i], scores["ex_fiqa_fw"][i]]
    row += list(scores["attn_scores"][i])
    row += [v[i] for v in extra.values()]
    writer.writerow([name] + [f"{float(v):.9g}" for v in row])
  return buf.getvalue()


def csv_text(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> str:
  buf = _io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(columns)
  for row in rows:
    writer.writerow([row[c] if isinstance(row[c], str) else _num(row[c]) for c in columns])
  return buf.getvalue()


def read_csv(path: str) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


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
          rnd = r.names.index(RANDOM) if RANDOM in r.names else None
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
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for name in names:
      lines.append("| " + " | ".join([name] + [col.get(name, "") for col in cells_by_col])
                   + " |")
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
  files.write_text(paths["edc"], csv_text((row for r in results for row in edc_rows(r)),
                                       EDC_COLUMNS))
  files.write_text(paths["pauc"], csv_text((row for r in results for row in pauc_rows(r)),
                                        PAUC_COLUMNS))
  files.write_json(paths["json"], summary_dict(results, extra))
  files.write_text(paths["md"], summary_markdown(results, title, notes, footer))
  return paths


def write_paired(output: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """pauc_diff.csv (atomic; header only when there was no bootstrap)."""
  path = os.path.join(output, "pauc_diff.csv")
  files.write_text(path, csv_text(rows, paired_lib.COLUMNS))
  return path


def paired_markdown(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """"Paired comparisons" section: every comparison not against `random` (fusions and the best
  exit against the last exit), Δ pAUC ×1e3 with its interval and p; the exit-vs-random ones
  summarised in one line (all of them are in pauc_diff.csv)."""
  if not rows:
    return []
  lines = ["## Paired comparisons: Δ pAUC-EDC ×1e3 = a − b (paired bootstrap; < 0: a better)",
           "",
           "| benchmark | FR model | mode | FMR | a | b | Δ ×1e3 | interval ×1e3 | p |",
           "|---|---|---|---|---|---|---|---|---|"]
  vs_random = [r for r in rows if r["quality_b"] == RANDOM]
  for r in rows:
    if r["quality_b"] == RANDOM:
      continue
    lines.append(f"| {r['benchmark']} | {r['fr_model']} | {r['mode']} | {r['fmr']:.0e} | "
                 f"{r['quality_a']} | {r['quality_b']} | {1e3 * r['delta_pauc']:.3f} | "
                 f"[{1e3 * r['ci_low']:.3f}, {1e3 * r['ci_high']:.3f}] | {r['p_value']:.3g} |")
  if vs_random:
    better = sum(1 for r in vs_random if r["p_value"] < 0.05 and r["delta_pauc"] < 0)
    lines += ["", f"Every exit against `{RANDOM}`: {len(vs_random)} comparisons, {better} "
              "significantly better at p < 0.05 (pauc_diff.csv)."]
  return lines + [""]


def sanity_markdown(sanity: Sequence[Mapping[str, Any]]) -> list[str]:
  """One "FR sanity" line: 10-fold accuracy per pair set, TAR@FAR per template set."""
  if not sanity:
    return []
  parts = []
  for s in sanity:
    if s.get("kind") == "tar_at_far":
      tars = ", ".join(f"TAR@FAR={k.split('=', 1)[1]} {100 * v:.2f} %"
                       for k, v in s.items() if k.startswith("tar@far="))
      parts.append(f"{s['benchmark']}/{s['fr_model']} {tars}")
    else:
      parts.append(f"{s['benchmark']}/{s['fr_model']} 10-fold accuracy "
                   f"{100 * s['accuracy_10fold']:.2f} %")
  return ["FR sanity (is the FR model, the data and the channel order right?): "
          + "; ".join(parts) + ".", ""]


# ------------------------------------------------------------------------------------------
# GFLOPs
# ------------------------------------------------------------------------------------------
def gflops_markdown(gflops: Mapping[str, tuple[np.ndarray, float]]) -> list[str]:
  """A GFLOPs-per-exit table (rows = quality models)."""
  if not gflops:
    return []
  depth = max(len(g) for g, _ in gflops.values())
  lines = ["## GFLOPs per image at each exit", "",
           "| model | " + " | ".join(f"exit {l}" for l in range(1, depth + 1)) + " | fusion |",
           "|" + "---|" * (depth + 2)]
  for name, (g, fuse) in gflops.items():
    cells = [f"{x:.2f}" for x in g] + [""] * (depth - len(g)) + [f"{fuse:.2f}"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return lines + [""]


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------
def _figure(width: float, height: float):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(width, height), dpi=100)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, path: str) -> str:
  with files.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", bbox_inches="tight")
  return path


def _style(col: QualityColumn, num_exits: int) -> dict[str, Any]:
  if col.kind == "exit":
    return dict(lw=0.9, alpha=0.25 + 0.45 * (col.exit or 1) / max(num_exits, 1), color="C0")
  if col.kind == "attn":
    bold = col.exit == num_exits
    return dict(lw=2.2 if bold else 0.8, alpha=1.0 if bold else 0.2, color="C3")
  if col.kind == "fusion":
    return dict(lw=2.2, alpha=1.0, color="C2" if col.name.endswith("_f") else "C1")
  if col.kind == "random":
    return dict(lw=1.6, alpha=0.9, color="k", ls="--")
  return dict(lw=1.6, alpha=0.9, color="C7", ls=":")


def _labelled(col: QualityColumn, num_exits: int) -> bool:
  return col.kind in ("fusion", "random", "oracle") or (col.exit in (1, num_exits))


def plot_edc(path: str, result: BenchmarkEval, mode: str,
             band: tuple[np.ndarray, np.ndarray] | None = None) -> str:
  """EDC curves of one benchmark and mode, one panel per FMR; band = bootstrap (low, high)
  [S, F, R] FNMR per level, drawn around the fusions, the last exit and the baselines."""
  m = result.modes[mode]
  fmrs = list(result.fmrs)
  fig = _figure(4.2 * len(fmrs), 3.6)
  depth = {c.model: max([x.exit or 0 for x in result.columns if x.model == c.model] + [1])
           for c in result.columns}
  x = np.asarray(m.curves.discard)
  for f, fmr in enumerate(fmrs):
    ax = fig.add_subplot(1, len(fmrs), f + 1)
    for s, col in enumerate(result.columns):
      L = depth.get(col.model, 1)
      style = _style(col, L)
      ax.plot(x, m.curves.fnmr[s, f], label=col.name if _labelled(col, L) else None, **style)
      if band is not None and (col.kind in ("fusion", RANDOM, "oracle")
                               or (col.kind == "exit" and col.exit == L)):
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
  return _save(fig, path)


def plot_pauc_vs_gflops(path: str, results: Sequence[BenchmarkEval], mode: str,
                        gflops: Mapping[str, tuple[np.ndarray, float]], fmr_index: int = -1
                        ) -> str:
  """pAUC per exit against that exit's GFLOPs (one line per benchmark × quality model);
  the fusions are drawn as markers at the fusion's cost, random as a dashed level."""
  fig = _figure(6.0, 4.2)
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
          ax.errorbar([g_fuse], [y], yerr=yerr, fmt="*" if c.name.endswith("fw") else "P",
                      ms=9, capsize=2, color=color)
      if RANDOM in r.names:
        ax.axhline(m.pauc[r.names.index(RANDOM), f], color=color, ls="--", lw=0.8, alpha=0.6)
    fmr = float(r.fmrs[f])
  ax.set_xlabel("GFLOPs per image (exit l)")
  ax.set_ylabel("pAUC-EDC")
  ax.set_title(f"pAUC vs GFLOPs, FMR {fmr:.0e} ({mode}); ★ EX-FIQA-FW, + EX-FIQA-F, "
               "-- random" if k else "pAUC vs GFLOPs (no exit columns)", fontsize=8)
  ax.grid(alpha=0.3)
  if k:
    ax.legend(fontsize=7)
  return _save(fig, path)


def attention_heatmaps(maps: np.ndarray, size: int = 112) -> np.ndarray:
  """Per-patch maps [K, N] → heat in [0, 1] [K, size, size] (docs/methods.md): reshape to the
  patch grid, min-max with ONE global min/max over all K maps (+1e-8), clip, bilinear resize."""
  maps = np.asarray(maps, np.float32)
  k, n = maps.shape
  grid = int(round(math.sqrt(n)))
  if grid * grid != n:
    raise ValueError(f"{n} values per map is not a square patch grid")
  lo, hi = float(maps.min()), float(maps.max())
  norm = np.clip((maps - lo) / (hi - lo + 1e-8), 0.0, 1.0).reshape(k, grid, grid)
  return np.stack([np.asarray(Image.fromarray(m, mode="F").resize((size, size), Image.BILINEAR))
                   for m in norm]) if k else np.zeros((0, size, size), np.float32)


def attention_overlays(images: np.ndarray, maps: np.ndarray, alpha: float = OVERLAY_ALPHA
                       ) -> np.ndarray:
  """uint8 RGB [K, S, S, 3] and per-patch maps [K, N] → uint8 overlays [K, S, S, 3]:
  (1 − alpha)·image + alpha·jet(heat)."""
  from matplotlib import colormaps
  images = np.asarray(images)
  heat = attention_heatmaps(maps, images.shape[1])
  jet = colormaps["jet"](heat)[..., :3] * 255.0
  out = (1.0 - alpha) * images.astype(np.float64) + alpha * jet
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def plot_attention(path: str, images: np.ndarray, maps: np.ndarray, scores: np.ndarray,
                   title: str, labels: Sequence[str] | None = None) -> str:
  """A row of overlays (images sorted by the caller, e.g. highest then lowest quality), each
  titled with its quality score."""
  over = attention_overlays(images, maps)
  k = len(over)
  cols = min(k, 8)
  rows = max(1, -(-k // cols))
  fig = _figure(1.5 * cols, 1.7 * rows + 0.4)
  for i in range(k):
    ax = fig.add_subplot(rows, cols, i + 1)
    ax.imshow(over[i])
    ax.set_axis_off()
    text = f"{float(scores[i]):.3g}"
    if labels is not None:
      text = f"{labels[i]}\n{text}"
    ax.set_title(text, fontsize=7)
  fig.suptitle(title, fontsize=9)
  return _save(fig, path)


def write_plots(output: str, results: Sequence[BenchmarkEval],
                gflops: Mapping[str, tuple[np.ndarray, float]] | None = None,
                bands: Mapping[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] | None = None
                ) -> list[str]:
  """EDC curve plots per benchmark/mode (with CI bands from `bands`, keyed (benchmark,
  fr_model, mode)) and pAUC-vs-GFLOPs plots (error bars = the pAUC CIs) per FR model/mode."""
  plots = os.path.join(output, "plots")
  written = []
  for r in results:
    for mode in r.modes:
      written.append(plot_edc(os.path.join(
          plots, f"edc_{files.slug(r.benchmark)}_{files.slug(r.fr_model)}_{mode}.png"), r, mode,
          (bands or {}).get((r.benchmark, r.fr_model, mode))))
  if gflops:
    by_fr: dict[str, list[BenchmarkEval]] = {}
    for r in results:
      by_fr.setdefault(r.fr_model, []).append(r)
    for fr, rs in by_fr.items():
      for mode in rs[0].modes:
        written.append(plot_pauc_vs_gflops(os.path.join(
            plots, f"pauc_vs_gflops_{files.slug(fr)}_{mode}.png"), rs, mode, gflops))
  return written
