"""The early_exit job's report (docs/evaluation.md, "Early exits and thresholds"): from the study's
summary (exfiqa_jax/evaluation/early_exit.py) early_exit.csv, early_exit.json, early_exit.md,
quality_mapping.json and two plots: pAUC against GFLOPs, and where the cascade decides.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from exfiqa_jax import columns, files, parallel, quality_mapping
from exfiqa_jax.report import plots, tables

FUSION_STYLE = {columns.EX_FIQA_F: ("P", "C2"), columns.EX_FIQA_FW: ("*", "C1"),
                columns.EX_FIQA_FIT: ("X", "C4")}     # pAUC-vs-GFLOPs markers
CSV_COLUMNS = ("method", "kind", "target", "exits", "mean_gflops", "saved", "pauc",
               "agreement", "agreement_calibration", "images_per_second")


def write(output: str, summary: Mapping[str, Any], mapping: quality_mapping.QualityMapping,
          model_dir: str | None = None) -> dict[str, str]:
  """Every file of the report of one study (evaluation.early_exit.analyse: its summary and
  0–100 mapping) into `output`, and the mapping also beside the model in `model_dir` (if given;
  the score task then writes q100_* columns). Call on the writing process only. Returns
  {what: path}."""
  rows, depth = summary["rows"], int(summary["depth"])
  decided_cols = ["decided_" + c for c in columns.exit_names(depth)]
  flat = [{**{k: r[k] for k in CSV_COLUMNS}, **dict(zip(decided_cols, r["decided"]))}
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
  return paths


def write_study(config, output: str, study: Mapping[str, Any], model_path: str) -> dict[str, str]:
  """write() as the early_exit and demo tasks call it: the study's (evaluation.early_exit.analyse)
  files into `output`, the mapping also into `model_path` when it is a directory and
  config.early_exit.mapping.store_with_model (default on). {} on processes that do not write."""
  if not parallel.is_writer():
    return {}
  store = config.early_exit.mapping.get("store_with_model", True) and os.path.isdir(model_path)
  return write(output, study["summary"], study["mapping"], model_dir=model_path if store else None)


def markdown(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
  """early_exit.md: the splits, τ, the headline and one table row per method and baseline."""
  b = summary["benchmark"]
  lines = ["# Early exits", "",
           f"Calibrated on `{b['calibration']['name']}` ({b['calibration']['images']} images), "
           f"evaluated on `{b['evaluation']['name']}` ({b['evaluation']['images']} images, "
           f"{b['evaluation']['pairs']} pairs). tau = {summary['tau']['value']:.6g} "
           f"({summary['tau']['rule']}). pAUC-EDC x1e3 at FMR {summary['fmr']:g} "
           f"(`fiqa`, up to {summary['pauc_limit']:g}).", "",
           f"Headline: {summary['headline']['text']}.", "",
           "| method | exits | GFLOPs/image | saved | pAUC x1e3 | agreement (eval / cal) "
           "| images/s |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['method']} | {r['exits']} | {r['mean_gflops']:.4g} | "
                 f"{100 * r['saved']:.1f} % | {1e3 * r['pauc']:.2f} | "
                 f"{100 * r['agreement']:.2f} / {100 * r['agreement_calibration']:.2f} % | "
                 f"{r['images_per_second']:.0f} |")
  for k, v in summary["baselines"].items():
    lines.append(f"| {k} | | | | {1e3 * v:.2f} | | |")
  return "\n".join(lines) + "\n"


def plot_pauc_vs_gflops(path: str, rows: Sequence[Mapping[str, Any]],
                        baselines: Mapping[str, float], fmr: float) -> str:
  """pAUC against mean GFLOPs per image: fixed exits (line), fusions (markers), the cascade
  sweep of agreement targets (line, labelled), baselines as levels."""
  fig = plots.figure(6.0, 4.2)
  ax = fig.add_subplot(1, 1, 1)
  ex = [r for r in rows if r["kind"] == "exit"]
  ax.plot([r["mean_gflops"] for r in ex], [r["pauc"] for r in ex], "o-", color="C0", ms=4,
          label="fixed exit k")
  for r in ex:
    ax.annotate(r["exits"], (r["mean_gflops"], r["pauc"]), fontsize=6, xytext=(2, 3),
                textcoords="offset points")
  for r in (r for r in rows if r["kind"] == "fusion"):
    marker, color = FUSION_STYLE.get(r["method"], ("X", "C4"))
    ax.plot([r["mean_gflops"]], [r["pauc"]], marker, ms=9, color=color, label=r["method"])
  cas = sorted((r for r in rows if r["kind"] == "cascade"), key=lambda r: r["mean_gflops"])
  if cas:
    ax.plot([r["mean_gflops"] for r in cas], [r["pauc"] for r in cas], "s-", color="C3", ms=4,
            label="cascade (agreement target)")
    for r in cas:
      ax.annotate(f"{r['target']:g}", (r["mean_gflops"], r["pauc"]), fontsize=6,
                  xytext=(2, -8), textcoords="offset points", color="C3")
  for i, (k, v) in enumerate(baselines.items()):
    color = {columns.RANDOM: "k", columns.ORACLE: "0.5"}.get(k, f"C{(i + 4) % 10}")  # files
    ax.axhline(v, color=color, ls="--" if k == columns.RANDOM else ":", lw=0.8, label=k)
  ax.set_xlabel("mean GFLOPs per image")
  ax.set_ylabel("pAUC-EDC")
  ax.set_title(f"pAUC-EDC (FMR {fmr:.0e}, fiqa) vs compute", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return plots.save(fig, path)


def plot_decided(path: str, rows: Sequence[Mapping[str, Any]], depth: int) -> str:
  """Stacked bars: per cascade agreement target, the fraction of images decided at each exit."""
  cas = [r for r in rows if r["kind"] == "cascade"]
  fig = plots.figure(max(4.0, 1.0 + 0.9 * len(cas)), 3.6)
  ax = fig.add_subplot(1, 1, 1)
  x = np.arange(len(cas))
  bottom = np.zeros(len(cas))
  for e in range(depth):
    h = np.asarray([r["decided"][e] for r in cas])
    if np.any(h > 0):
      ax.bar(x, h, bottom=bottom, color=f"C{e % 10}", label=f"exit {e + 1}", width=0.6)
    bottom += h
  ax.set_xticks(x, [f"{r['target']:g}" for r in cas], fontsize=8)
  ax.set_xlabel("agreement target")
  ax.set_ylabel("fraction of images decided")
  ax.set_ylim(0, 1)
  ax.set_title("Where the cascade decides (evaluation split)", fontsize=9)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  return plots.save(fig, path)
