"""Task "eval": quality at every exit → FR comparisons → EDC / pAUC → reports (configs/eval_*.py).

The stages and their caching are in exfiqa_jax/evaluation/pipeline.py; this module opens the
benchmarks, runs the pipeline and writes edc.csv, pauc.csv, summary.json/.md, plots/ and
<benchmark>/scores_<model>.csv (process 0 only).
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from exfiqa_jax import files, parallel, report
from exfiqa_jax.data import protocols
from exfiqa_jax.evaluation import benchmarks as benchmarks_lib
from exfiqa_jax.evaluation import groups as groups_lib
from exfiqa_jax.evaluation import pipeline
from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.evaluation.pipeline import EvalRun, QualitySpec


def write_scores(output: str, run: EvalRun, quality: Sequence[QualitySpec]) -> None:
  """<output>/<benchmark>/scores_<model>.csv in the scores.csv contract (docs/evaluation.md)."""
  for bench, per_model in run.quality.items():
    for spec in quality:
      st = per_model[spec.name]
      files.write_text(os.path.join(output, files.slug(bench), f"scores_{files.slug(spec.name)}.csv"),
                    report.score_table(list(st["name"]), st.arrays, "exit_scores" in st.arrays))


def attention_examples(output: str, bench: Benchmark, run: EvalRun,
                       quality: Sequence[QualitySpec], count: int) -> list[str]:
  """Overlays of the `count` highest- and lowest-quality images per quality model."""
  if count <= 0 or jax.process_count() > 1:
    return []
  written = []
  for spec in quality:
    st = run.quality[bench.name][spec.name]
    q = st["exit_scores"][:, -1] if "exit_scores" in st.arrays else st["attn_scores"][:, -1]
    order = np.argsort(-q, kind="stable")
    k = min(count, len(q) // 2)
    rows = np.concatenate([order[:k], order[::-1][:k][::-1]])
    images, _ = bench.read(rows)
    out = spec.model.score(images, attn_maps=True)
    maps = out["attn_maps"][:, -1]
    n = maps.shape[-1]
    if int(round(np.sqrt(n))) ** 2 != n:       # a quality token first: keep the patches
      maps = maps[:, 1:]
    labels = [f"high #{i + 1}" for i in range(k)] + [f"low #{k - i}" for i in range(k)]
    written.append(report.plot_attention(
        os.path.join(output, "plots", f"attention_{files.slug(bench.name)}_{files.slug(spec.name)}.png"),
        images, maps, q[rows], f"{bench.name}, {spec.name}: last-block attention, highest "
        "(left) and lowest (right) quality", labels))
  return written


def protocol_summary(config, benchmarks: Sequence[Benchmark]) -> dict[str, Any]:
  """summary.json: the pixel protocol of the run and of every benchmark read from files
  (docs/data.md, "Protocols: published and lossless"); nothing for in-memory arrays (demo)."""
  used = {b.name: b.protocol for b in benchmarks if b.protocol}
  return {"protocol": config.data.get("protocol", "published"), "protocols": used} if used else {}


def protocol_markdown(benchmarks: Sequence[Benchmark]) -> list[str]:
  used = sorted({b.protocol for b in benchmarks if b.protocol})
  return ([f"Pixels: protocol `{'`, `'.join(used)}` (docs/data.md, Protocols: published and "
           "lossless).", ""] if used else [])


def write_report(config, run: EvalRun, benchmarks: Sequence[Benchmark],
                 quality: Sequence[QualitySpec], extra: Mapping[str, Any] | None = None,
                 title: str = "EDC evaluation", notes: Sequence[str] = (),
                 footer: Sequence[str] = ()) -> dict[str, Any]:
  """Every output file (process 0 only); `footer` lines go under the tables of summary.md."""
  if not parallel.is_writer():
    return {}
  output = config.output
  gflops = pipeline.gflops_table(quality)
  summary_extra = {"fmrs": [float(f) for f in config.eval.fmrs],
                   "modes": list(config.eval.modes),
                   "pauc_limit": {m: float(config.eval.pauc_limit[m]) for m in config.eval.modes},
                   "bootstrap": int(config.eval.get("bootstrap", 0)),
                   "quality_models": {q.name: q.path for q in quality},
                   "gflops_per_exit": {k: [round(float(x), 4) for x in v[0]]
                                       for k, v in gflops.items()},
                   "gflops_fusion": {k: round(v[1], 4) for k, v in gflops.items()},
                   "seconds_per_benchmark": run.seconds,
                   "bootstrap_unit": run.bootstrap_units, "fr_sanity": run.sanity,
                   "paired_comparisons": run.paired,
                   **protocol_summary(config, benchmarks),
                   **({"groups": groups_lib.summary(run.groups)} if run.groups else {}),
                   **(extra or {})}
  notes = report.sanity_markdown(run.sanity) + list(notes)
  paths = report.write_tables(output, run.results, summary_extra, title, notes,
                              report.paired_markdown(run.paired)
                              + list(report.gflops_markdown(gflops)) + protocol_markdown(benchmarks)
                              + groups_lib.markdown(run.groups, run.results) + list(footer))
  if config.eval.get("paired", True):
    paths["paired"] = report.write_paired(output, run.paired)
  write_scores(output, run, quality)
  group_paths = groups_lib.write(output, run.groups, run.results,
                                 plots=bool(config.report.get("plots", True)))
  paths.update({k: v for k, v in group_paths.items() if k != "group_plots"})
  plots = list(group_paths.get("group_plots", []))
  if config.report.get("plots", True):
    plots += report.write_plots(output, run.results, gflops, run.bands)
    for bench in benchmarks:
      plots += attention_examples(output, bench, run, quality,
                                  int(config.report.get("attention_examples", 4)))
  return {**paths, "plots": plots}


def run(config) -> dict[str, Any]:
  """Task "eval" (configs/eval_ijbc.py, configs/eval_verification.py)."""
  started = time.time()
  pipeline.check_eval_config(config)
  protocols.check_protocol(config.data.get("protocol", "published"))   # before any model loads
  if parallel.is_writer():
    files.check_output_dir(config.output)
  quality = pipeline.load_quality_models(config)
  pipeline.fr_items(config, quality)                     # bad FR input fails before any data work
  benchmarks = [benchmarks_lib.open_benchmark(name, config)
                for name in benchmarks_lib.benchmark_names(config)]
  ev = pipeline.evaluate(config, benchmarks, quality)
  out = write_report(config, ev, benchmarks, quality,
                     extra={"seconds_total": round(time.time() - started, 1)})
  logging.info("evaluation written to %s (%.1f s)", config.output, time.time() - started)
  return {**out, "results": ev.results, "computed": ev.cache.computed()}
