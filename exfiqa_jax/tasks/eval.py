"""Task "eval": quality at every exit → FR comparisons → EDC / pAUC → reports (configs/eval_*.py).

The stages and their caching are in exfiqa_jax/evaluation/pipeline.py (other methods' score
files: evaluation/external.py), the files written in exfiqa_jax/report/evaluation.py: edc.csv,
pauc.csv, summary.json/.md, comparison.md/.csv (report/comparison.py), plots/ and
<benchmark>/scores_<model>.csv (process 0 only).
"""
from __future__ import annotations

import time
from typing import Any

from absl import logging

from exfiqa_jax import files, parallel
from exfiqa_jax.data import protocols
from exfiqa_jax.evaluation import attention, checks, pipeline
from exfiqa_jax.evaluation import benchmarks as benchmarks_lib
from exfiqa_jax.report import evaluation as report


def run(config) -> dict[str, Any]:
  """Task "eval" (configs/eval_ijbc.py, configs/eval_verification.py)."""
  started = time.time()
  config = pipeline.with_user_paths(config)         # `~` in every path field, once
  checks.check_eval_config(config)
  protocols.check_protocol(config.data.get("protocol", "published"))   # before any model loads
  if parallel.is_writer():
    files.check_output_dir(config.output)
  with files.folder_lock(config.output, "eval", "--config.output",   # one run per folder
                         enabled=parallel.is_writer()):
    return _run(config, started)


def _run(config, started: float) -> dict[str, Any]:
  quality = pipeline.load_quality_models(config)
  scores = pipeline.load_external_scores(config)         # other methods' score files, read once
  pipeline.fr_items(config, quality)                     # bad FR input fails before any data work
  benchmarks = [benchmarks_lib.open_benchmark(name, config)
                for name in benchmarks_lib.benchmark_names(config)]
  ev = pipeline.evaluate(config, benchmarks, quality, scores=scores)
  examples = attention.examples(ev, benchmarks, quality, report.attention_count(config))
  out = report.write(config, ev, benchmarks, quality, examples,
                     extra={"seconds_total": round(time.time() - started, 1)})
  logging.info("evaluation written to %s (%.1f s)", config.output, time.time() - started)
  return {**out, "results": ev.results, "computed": ev.cache.computed()}
