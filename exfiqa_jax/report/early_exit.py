"""The early_exit job's report (docs/evaluation.md, "Early exits and thresholds"): from the study's
summary (exfiqa_jax/evaluation/early_exit.py) early_exit.csv, early_exit.json, early_exit.md,
quality_mapping.json and two plots: pAUC against GFLOPs, and where the cascade decides.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from exfiqa_jax import columns, files, parallel, quality_mapping
from exfiqa_jax.calibrate import early_exit as study
from exfiqa_jax.models import exits as exits_lib
from exfiqa_jax.report import plots, tables

FUSION_STYLE = {columns.EX_FIQA_F: ("P", "C2", 7), columns.EX_FIQA_FW: ("D", "C1", 11),
                columns.EX_FIQA_FIT: ("o", "C4", 15)}   # pAUC-vs-GFLOPs: marker, colour, size
HOLLOW = ("D", "o")       # the larger fusion markers are hollow: a smaller one shows inside
MAX_LABELS = 6            # fixed exits numbered on the pAUC-vs-GFLOPs plot (1, …, L among them)
CSV_COLUMNS = ("method", "kind", "target", "exits", "mean_gflops", "saved", "pauc",
               "agreement", "agreement_calibration", "images_per_second",
               "predicted_images_per_second")


def write(output: str, summary: Mapping[str, Any], mapping: quality_mapping.QualityMapping,
          model_dir: str | None = None, cascade_dir: str | None = None) -> dict[str, str]:
  """Every file of the report of one study (evaluation.early_exit.analyse: its summary and
  0–100 mapping) into `output`, and the mapping also beside the model in `model_dir` (if given;
  the score task then writes q100_* columns), the calibrated cascades in `cascade_dir` (if
  given: cascade.json, which fx.load(dir).cascade runs). Call on the writing process only.
  Returns {what: path}."""
  rows, depth = summary["rows"], int(summary["depth"])
  decided_cols = ["decided_" + c for c in columns.exit_names(depth)]
  flat = [{**{k: r.get(k, math.nan) for k in CSV_COLUMNS},
           **dict(zip(decided_cols, r["decided"]))}
          for r in rows]
  paths = {"csv": os.path.join(output, "early_exit.csv"),
           "json": os.path.join(output, "early_exit.json"),
           "md": os.path.join(output, "early_exit.md"),
           "mapping": os.path.join(output, quality_mapping.MAPPING_FILE)}
  files.write_text(paths["csv"], tables.csv_text(flat, list(CSV_COLUMNS) + decided_cols))
  files.write_json(paths["json"], summary)
  files.write_text(paths["md"], markdown(summary, rows))
  quality_mapping.save_mapping(paths["mapping"], mapping)
  paths["plot_pauc"] = plot_pauc_vs_gflops(
      os.path.join(output, "plots", "early_exit_pauc_vs_gflops.png"), rows,
      summary["baselines"], summary["fmr"])
  paths["plot_decided"] = plot_decided(os.path.join(output, "plots", "early_exit_decided.png"),
                                       rows, depth)
  if model_dir:
    paths["model_mapping"] = quality_mapping.store_with_model(model_dir, mapping)
  if cascade_dir:
    paths["model_cascade"] = exits_lib.store_with_model(cascade_dir, cascade_record(summary))
  return paths


def cascade_record(summary: Mapping[str, Any]) -> dict[str, Any]:
  """What cascade.json keeps beside the model (models/exits.py store_with_model): per agreement
  target the thresholds, what they minimise, the predicted speed and any fallback; the device
  the costs were measured on and the headline target (`fx.load(dir).cascade(images)`)."""
  keep = ("target", "thresholds", "objective", "fallback")
  return {"headline": summary["headline"].get("target", 0.99),
          "device": summary.get("device"), "model": summary.get("model"),
          "cascades": [{**{k: c.get(k) for k in keep},
                        "predicted_speedup": c["evaluation"].get("predicted_speedup"),
                        "agreement": c["evaluation"]["agreement"],
                        "saved": c["evaluation"]["saved"]} for c in summary["cascades"]]}


def write_study(config, output: str, study: Mapping[str, Any], model_path: str) -> dict[str, str]:
  """write() as the early_exit and demo tasks call it: the study's (evaluation.early_exit.analyse)
  files into `output`, the mapping also into `model_path` when it is a directory and
  config.early_exit.mapping.store_with_model (default on), and the calibrated cascades there
  too with config.early_exit.cascade.store_with_model (default on). {} on processes that do not
  write."""
  if not parallel.is_writer():
    return {}
  s = config.early_exit
  is_dir = os.path.isdir(model_path)
  store = s.mapping.get("store_with_model", True) and is_dir
  store_cascade = s.cascade.get("store_with_model", True) and is_dir
  return write(output, study["summary"], study["mapping"], model_dir=model_path if store else None,
               cascade_dir=model_path if store_cascade else None)


def _number(v: float | None, spec: str) -> str:
  """A table cell: "—" for what was not measured (NaN, None), no "-0.0"."""
  if v is None or not math.isfinite(v):
    return "—"
  text = format(v, spec)
  return text[1:] if text.startswith("-") and float(text) == 0 else text


def markdown(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
  """early_exit.md: the splits, τ, the headline, what the cascade was calibrated for (and any
  fallback to one segment), one table row per method and baseline."""
  b = summary["benchmark"]
  lines = ["# Early exits", "",
           f"Calibrated on `{b['calibration']['name']}` ({b['calibration']['images']} images), "
           f"evaluated on `{b['evaluation']['name']}` ({b['evaluation']['images']} images, "
           f"{b['evaluation']['pairs']} pairs). tau = {summary['tau']['value']:.6g} "
           f"({summary['tau']['rule']}). pAUC-EDC x1e3 at FMR {summary['fmr']:g} "
           f"(`fiqa`, up to {summary['pauc_limit']:g}).", "",
           f"Headline: {summary['headline']['text']}.", ""]
  cas = [r for r in rows if r["kind"] == "cascade"]
  device = parallel.device_name(summary.get("device") or {})
  if cas and cas[0].get("objective") == "seconds":
    lines += [f"The cascades minimise the seconds per image predicted by the cost model "
              f"measured on {device} (fewer GFLOPs need not mean faster); "
              "predicted and measured images/s side by side.", ""]
    lines += [f"- {study.fallback_text(r['target'], r['fallback'], device)}."
              for r in cas if r.get("fallback")]
    lines += [""] if any(r.get("fallback") for r in cas) else []
  elif cas:
    lines += ["The cascades minimise GFLOPs (`early_exit.cascade.cost=gflops`), which need not "
              "mean faster on this device.", ""]
  lines += ["| method | exits | GFLOPs/image | saved | pAUC x1e3 | agreement (eval / cal) "
            "| images/s | predicted images/s |",
            "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['exits']} | {r['mean_gflops']:.4g} | "
                 f"{_number(100 * r['saved'], '.1f')} % | {1e3 * r['pauc']:.2f} | "
                 f"{100 * r['agreement']:.2f} / {100 * r['agreement_calibration']:.2f} % | "
                 f"{_number(r['images_per_second'], '.0f')} | "
                 f"{_number(r.get('predicted_images_per_second'), '.0f')} |")
  for k, v in summary["baselines"].items():
    lines.append(f"| {k} | | | | {1e3 * v:.2f} | | | |")
  return "\n".join(lines) + "\n"


def plot_pauc_vs_gflops(path: str, rows: Sequence[Mapping[str, Any]],
                        baselines: Mapping[str, float], fmr: float) -> str:
  """pAUC ×1e3 against mean GFLOPs per image: fixed exits (line, a few exits numbered), fusions
  (concentric markers of different sizes: none hides another), the cascade sweep of agreement
  targets (line; coincident targets share one label, labels staggered), baselines as levels;
  the legend beside the axes."""
  fig = plots.figure(6.0, 4.0)
  ax = fig.add_subplot(1, 1, 1)
  ex = [r for r in rows if r["kind"] == "exit"]
  ax.plot([r["mean_gflops"] for r in ex], [1e3 * r["pauc"] for r in ex], "o-", color="C0", ms=4,
          label="fixed exit k (numbered)")
  step = max(1, -(-len(ex) // MAX_LABELS))
  for i, r in enumerate(ex):
    if i % step == 0 or i == len(ex) - 1:
      ax.annotate(r["exits"], (r["mean_gflops"], 1e3 * r["pauc"]), fontsize=6, xytext=(0, 8),
                  textcoords="offset points", ha="center", va="bottom", color="C0")
  for r in (r for r in rows if r["kind"] == "fusion"):
    marker, color, size = FUSION_STYLE.get(r["method"], ("X", "C4", 9))
    hollow = marker in HOLLOW
    ax.plot([r["mean_gflops"]], [1e3 * r["pauc"]], marker, ms=size, color=color,
            mfc="none" if hollow else color, mew=1.5 if hollow else 1.0, ls="none",
            label=r["method"], zorder=3)
  cas = sorted((r for r in rows if r["kind"] == "cascade"), key=lambda r: r["mean_gflops"])
  if cas:
    ax.plot([r["mean_gflops"] for r in cas], [1e3 * r["pauc"] for r in cas], "s-", color="C3",
            ms=4, label="cascade (labels: agreement target)", zorder=4)   # above the fusions
    _cascade_labels(ax, cas)
  for i, (k, v) in enumerate(baselines.items()):
    color = {columns.RANDOM: "k", columns.ORACLE: "0.5"}.get(k, f"C{(i + 4) % 10}")  # files
    ax.axhline(1e3 * v, color=color, ls="--" if k == columns.RANDOM else ":", lw=0.8, label=k)
  ax.margins(y=0.08)
  plots.axes_text(ax, "mean GFLOPs per image", "pAUC-EDC ×1e3",
                  f"pAUC-EDC (FMR {fmr:.0e}, fiqa) vs compute")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)
  return plots.save(fig, path)


def _cascade_labels(ax, cas: Sequence[Mapping[str, Any]]) -> None:
  """One label per distinct cascade point (targets that give the same point share it), below
  the line, alternately nearer and further so neighbours do not overlap."""
  points: dict[tuple[float, float], list[str]] = {}
  for r in cas:
    points.setdefault((r["mean_gflops"], 1e3 * r["pauc"]), []).append(f"{r['target']:g}")
  for i, ((x, y), targets) in enumerate(points.items()):
    text = targets[0] if len(targets) == 1 else f"{targets[0]}–{targets[-1]}"
    ax.annotate(text, (x, y), fontsize=6, xytext=(0, -8 - 8 * (i % 2)),   # below any marker
                textcoords="offset points", ha="center", va="top", color="C3")


def plot_decided(path: str, rows: Sequence[Mapping[str, Any]], depth: int) -> str:
  """Stacked bars: per cascade agreement target, the fraction of images decided at each exit
  (light to dark with depth, as the EDC plots draw exits)."""
  from matplotlib import colormaps
  cas = [r for r in rows if r["kind"] == "cascade"]
  fig = plots.figure(max(4.0, 1.0 + 0.9 * len(cas)), 3.4)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(cas))
  bottom = np.zeros(len(cas))
  for e in range(depth):
    h = np.asarray([r["decided"][e] for r in cas])
    if np.any(h > 0):
      ax.bar(x, h, bottom=bottom, width=0.6, label=f"exit {e + 1}",
             color=colormaps["viridis"](1.0 - 0.9 * e / max(depth - 1, 1)))
    bottom += h
  ax.set_xticks(x, [f"{r['target']:g}" for r in cas])
  ax.set_ylim(0, 1)
  plots.axes_text(ax, "agreement target", "fraction of images decided",
                  "Where the cascade decides (evaluation split)")
  ax.grid(False)
  handles, labels = ax.get_legend_handles_labels()      # top to bottom, as the bars stack
  ax.legend(handles[::-1], labels[::-1], fontsize=7, loc="upper left",
            bbox_to_anchor=(1.02, 1.0), frameon=False, title="decided at", title_fontsize=7)
  return plots.save(fig, path)
