"""Task "demo": the embedded default (`python main.py --config=configs/demo.py`), no downloads.

1. train the tiny ViT-FIQA config on the synthetic-faces training split (configs/train_tiny.py:
   clean images re-degraded afresh every batch; resumable Orbax checkpoints in <output>/train);
2. render the identity-disjoint test split (degraded, severity recorded per image) and its pairs;
3. evaluate exactly as `eval` does (exfiqa_jax/evaluation/pipeline.py): every exit, the fusions
   and ATTN in one pass, the model's own feature head as the FR model, EDC (both modes) for
   every quality column plus the seeded `random` baseline and the `oracle` (minus the true
   severity);
4. early exits (exfiqa_jax/evaluation/early_exit.py): thresholds, the 0–100 mapping and the cascade
   calibrated on the identity-disjoint val split, evaluated on the test split's scores from 3.
   (predicted from the full-pass exit matrix; images/s measured on a small subset) →
   <output>/early_exit/, the mapping stored with the trained model;
5. write the full report (exfiqa_jax/report/evaluation.py, report/demo.py), with
   `spearman_vs_severity` per quality column (and per degradation kind, evaluation/severity.py)
   in summary.json, the targets of the demo checked and the compute the cascade saves at
   99 % agreement in summary.md.

Every stage is cached in <output>: a second run recomputes nothing that finished. Each part's
seconds are kept in <output>/timings.json from the run that computed it, so a cached rerun's
time line still gives them (with the rerun's own seconds beside them).
"""
from __future__ import annotations

import os
import time
from typing import Any

from absl import logging

from exfiqa_jax import columns, files, parallel
from exfiqa_jax.evaluation import attention, early_exit, pipeline, severity, stages
from exfiqa_jax.report import demo as demo_report
from exfiqa_jax.report import early_exit as early_exit_report
from exfiqa_jax.report import evaluation as report
from exfiqa_jax.train import data as train_data
from exfiqa_jax.train import trainer


TIMINGS_FILE = "timings.json"    # each part's seconds from the run that computed it


def trained_model(train_cfg) -> str | None:
  """The exported model of a finished training with this config, None if it must train."""
  model_dir = os.path.join(train_cfg.output, "model")
  done_file = os.path.join(train_cfg.output, "trained_config.json")
  fp = stages.fingerprint(trainer.resume_relevant(train_cfg))
  if os.path.isdir(model_dir) and os.path.isfile(done_file) and files.read_json(done_file) == fp:
    return model_dir
  return None


def train_model(train_cfg) -> str:
  """Trains (or resumes) the demo model; a finished training with the same config is reused
  without rendering its data again. Returns the exported model directory."""
  model_dir = trained_model(train_cfg)
  if model_dir is not None:
    logging.info("reusing the trained model in %s", model_dir)
    return model_dir
  model_dir = os.path.join(train_cfg.output, "model")
  done_file = os.path.join(train_cfg.output, "trained_config.json")
  fp = stages.fingerprint(trainer.resume_relevant(train_cfg))
  data, pairs = train_data.build_data(train_cfg)
  trainer.train(train_cfg, data, pairs)
  if not os.path.isdir(model_dir):
    raise RuntimeError(f"training did not export {model_dir}; is config.train.stop_after set?")
  files.write_json(done_file, fp)
  return model_dir


def run(config) -> dict[str, Any]:
  started = time.time()
  config = pipeline.with_user_paths(config)   # a copy (the caller's stays as given), `~` expanded
  output = config.output
  if parallel.is_writer():
    files.check_output_dir(output)
  trainer.check_config(config.train, "--config.train.")   # before any data is rendered
  with files.folder_lock(output, "demo", "--config.output",       # one run per folder
                         enabled=parallel.is_writer()):
    return _run(config, output, started)


def _run(config, output: str, started: float) -> dict[str, Any]:
  train_cfg = config.train
  train_cfg.output = train_cfg.get("output", "") or os.path.join(output, "train")
  train_cfg.seed = config.seed
  fresh = set() if trained_model(train_cfg) else {"train"}   # the parts this run computes
  t0 = time.time()
  model_dir = train_model(train_cfg)
  seconds = {"train": round(time.time() - t0, 1)}

  t0 = time.time()
  bench = early_exit.synthetic_split(config, "test")   # identity-disjoint, degraded
  true_severity, kind = bench.extra["severity"], bench.extra["kind"]
  seconds["test_data"] = round(time.time() - t0, 1)
  config.quality_model.path = ",".join(   # the trained model, and the baselines run on it
      [f"vitfiqa_tiny={model_dir}"] + [f"{m}={m}:{model_dir}" for m in config.get("baselines", ())])
  quality = pipeline.load_quality_models(config)
  t0 = time.time()
  ev = pipeline.evaluate(config, [bench], quality, extra_columns=lambda b: {
      columns.ORACLE: (columns.ORACLE, -true_severity)})
  seconds["evaluate"] = round(time.time() - t0, 1)
  evaluated = len(ev.cache.computed())
  fresh |= {"test_data", "evaluate"} if evaluated else set()
  cols, image_q = ev.columns[early_exit.SYNTHETIC]
  rho, rho_kind = severity.severity_correlations([c.name for c in cols], image_q, true_severity,
                                                 kind)
  check = severity.target_check(config.targets, ev.results[0], rho)
  t0 = time.time()      # early exits: calibrated on the val split, the test scores reused
  exits = early_exit.analyse(config, early_exit.synthetic_split(config, "val"), bench,
                             quality[0], ev.cache, quality)
  early_exit_report.write_study(config, os.path.join(output, "early_exit"), exits, quality[0].path)
  seconds["early_exit"] = round(time.time() - t0, 1)
  fresh |= {"early_exit"} if len(ev.cache.computed()) > evaluated else set()
  seconds["total"] = round(time.time() - started, 1)
  timing = timings(output, seconds, fresh)
  machine = parallel.device_info()      # trained numbers depend on the CPU model (README)
  extra = {"spearman_vs_severity": rho, "spearman_by_degradation": rho_kind, "targets": check,
           "machine": machine,
           "seconds": timing["seconds"], "early_exit": exits["headline"],
           **({"seconds_this_run": seconds} if "rerun" in timing else {})}
  examples = attention.examples(ev, [bench], quality, report.attention_count(config))
  out = report.write(config, ev, [bench], quality, examples, extra=extra,
                     title="exfiqa-jax demo: tiny ViT-FIQA on synthetic faces",
                     notes=demo_report.notes(bench, check, timing, exits["headline"]["text"],
                                             machine),
                     footer=demo_report.severity_table(rho, rho_kind))
  log = logging.info if check["met"] else logging.warning
  log("demo targets %s: %s", "met" if check["met"] else "NOT met", check)
  logging.info("demo written to %s (%.0f s)", output, seconds["total"])
  return {**out, "targets": check, "spearman_vs_severity": rho, "seconds": seconds,
          "computed": ev.cache.computed()}


def timings(output: str, seconds: dict[str, float], fresh: set[str]) -> dict[str, Any]:
  """This run's seconds merged with those <output>/timings.json kept for the parts it did not
  compute (report/demo.py merge_timings); the merged seconds are stored back (process 0)."""
  path = os.path.join(output, TIMINGS_FILE)
  try:
    stored = files.read_json(path) if os.path.isfile(path) else None
  except (OSError, ValueError) as e:
    logging.warning("ignoring %s (%s): the time line gives what this run measured", path, e)
    stored = None
  timing = demo_report.merge_timings(stored, seconds, fresh)
  if parallel.is_writer():
    files.write_json(path, {"seconds": timing["seconds"]})
  return timing
