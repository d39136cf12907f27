"""Task "early_exit": fixed exits, the cascade and calibrated thresholds (configs/early_exit.py).

For one benchmark (the synthetic faces by default) calibrates on one split and evaluates on
another, identity-disjoint (docs/evaluation.md, "Early exits and thresholds"): the study is
exfiqa_jax/evaluation/early_exit.py (splits, cached stages, τ and the threshold table, the 0–100
mapping, fixed exits, fusions and cascades, pAUC, measured images/s; the numbers themselves in
exfiqa_jax/calibrate/), the files exfiqa_jax/report/early_exit.py.
Writes (process 0, atomically) early_exit.csv, early_exit.json, early_exit.md,
quality_mapping.json and plots/early_exit_pauc_vs_gflops.png, plots/early_exit_decided.png;
with early_exit.mapping.store_with_model also the mapping into the model directory (the score
task then writes q100_* columns).
"""
from __future__ import annotations

import os
import time
from typing import Any

from absl import logging

from exfiqa_jax import files, parallel
from exfiqa_jax.evaluation import benchmarks, pipeline, stages
from exfiqa_jax.evaluation import early_exit as study
from exfiqa_jax.report import early_exit as report


def run(config) -> dict[str, Any]:
  """Task "early_exit" (configs/early_exit.py)."""
  started = time.time()
  config = pipeline.with_user_paths(config)         # `~` in every path field, once
  if parallel.is_writer():
    files.check_output_dir(config.output)
  with files.folder_lock(config.output, "early_exit", "--config.output",  # one run per folder
                         enabled=parallel.is_writer()):
    return _run(config, started)


def _run(config, started: float) -> dict[str, Any]:
  quality = pipeline.load_quality_models(config)
  if len(quality) != 1:
    raise ValueError("early_exit analyses one quality model; pass one "
                     "--config.quality_model.path")
  if quality[0].model.method or not quality[0].model.has_exits:
    raise ValueError(f"early_exit studies a ViT-FIQA model's exits; {quality[0].path} with "
                     f"{pipeline.METHOD_FLAG}{quality[0].model.method} has none (leave the method "
                     "empty and pass a ViT-FIQA checkpoint)")
  _check_model_dir_writable(config, quality[0].path)
  scores = pipeline.load_external_scores(config)    # other methods' score files, read once
  pipeline.fr_items(config, quality)        # a bad FR input fails before any data work
  names = benchmarks.benchmark_names(config)
  if len(names) != 1:
    raise ValueError(f"early_exit takes one benchmark, got {names}")
  if names[0] == study.SYNTHETIC:
    cal, ev, how = (study.synthetic_split(config, "val"), study.synthetic_split(config, "test"),
                    "identity")
  else:
    cal, ev, how = study.split_benchmark(benchmarks.open_benchmark(names[0], config),
                                         float(config.early_exit.split.fraction),
                                         int(config.seed))
  logging.info("early exits on %s: calibration %s (%d images), evaluation %s (%d images), "
               "split by %s", names[0], cal.name, cal.num_images, ev.name, ev.num_images, how)
  cache = stages.StageCache(os.path.join(config.output, "cache"),
                            progress=config.get("progress", True))
  spec = quality[0]
  out = study.analyse(config, cal, ev, spec, cache, quality, extra={"split": how}, scores=scores)
  written = report.write_study(config, config.output, out, spec.path)
  logging.info("early-exit analysis written to %s (%.1f s)", config.output, time.time() - started)
  return {**written, **out, "computed": cache.computed()}


def _check_model_dir_writable(config, model_path: str) -> None:
  """The mapping and the cascades go into the model directory at the END of the study: a
  directory this process cannot write is an error now, naming the settings that skip them."""
  stored = [f"--config.early_exit.{part}.store_with_model" for part in ("mapping", "cascade")
            if config.early_exit.get(part, {}).get("store_with_model", True)]
  if not stored or not parallel.is_writer() or not os.path.isdir(model_path):
    return
  try:
    files.probe_writable(model_path)
  except OSError as e:
    raise ValueError(f"cannot write into the model directory {model_path} ({e.strerror or e}), "
                     "where the study stores its quality_mapping.json and cascade.json; make it "
                     f"writable, or pass {'=False and '.join(stored)}=False (the study's "
                     "files in --config.output are written either way)") from e
