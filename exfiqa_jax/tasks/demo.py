"""Task "demo": the embedded default (`python main.py --config=configs/demo.py`), no downloads.

1. train the tiny ViT-FIQA config on the synthetic-faces training split (configs/train_tiny.py:
   clean images re-degraded afresh every batch; resumable Orbax checkpoints in <output>/train);
2. render the identity-disjoint test split (degraded, severity recorded per image) and its pairs;
3. evaluate exactly as `eval` does (exfiqa_jax/evaluation/pipeline.py): every exit, the fusions and ATTN in
   one pass, the model's own feature head as the FR model, EDC (both modes) for every quality
   column plus the seeded `random` baseline and the `oracle` (minus the true severity);
4. early exits (exfiqa_jax/evaluation/early_exit.py): thresholds, the 0–100 mapping and the cascade
   calibrated on the identity-disjoint val split, evaluated on the test split's scores from 3.
   (predicted from the full-pass exit matrix; images/s measured on a small subset) →
   <output>/early_exit/, the mapping stored with the trained model;
5. write the full report, with `spearman_vs_severity` per quality column (and per degradation
   kind) in summary.json, the targets of the demo checked and the compute the cascade saves at
   99 % agreement in summary.md.

Every stage is cached in <output>: a second run recomputes nothing that finished.
"""
from __future__ import annotations

import os
import time
from typing import Any, Mapping

import ml_collections
import numpy as np
from absl import logging

from exfiqa_jax import files, parallel
from exfiqa_jax.evaluation import pipeline, results, stages
from exfiqa_jax.evaluation import early_exit
from exfiqa_jax.report import early_exit as early_exit_report
from exfiqa_jax.tasks import eval as eval_task
from exfiqa_jax.data import synthetic
from exfiqa_jax.train import data as train_data
from exfiqa_jax.train import trainer



def spearman(a: np.ndarray, b: np.ndarray) -> float:
  """Spearman rank correlation with average ranks for ties (scipy.stats.spearmanr)."""
  ra, rb = _average_ranks(np.asarray(a, np.float64)), _average_ranks(np.asarray(b, np.float64))
  ra, rb = ra - ra.mean(), rb - rb.mean()
  den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
  return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


def _average_ranks(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x), dtype=np.float64)
  _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
  sums = np.bincount(inverse, weights=ranks)
  return sums[inverse] / counts[inverse]


def severity_correlations(names: list[str], image_q: np.ndarray, severity: np.ndarray,
                          kind: np.ndarray
                          ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
  """Spearman(quality, -severity) per column, overall and within each degradation kind (the
  clean images included in every kind, so each kind spans severity 0 .. 1)."""
  overall, by_kind = {}, {}
  clean = severity == 0
  for name, q in zip(names, image_q):
    overall[name] = round(spearman(q, -severity), 4)
    by_kind[name] = {k: round(spearman(q[sel], -severity[sel]), 4)
                     for i, k in enumerate(synthetic.DEGRADATIONS)
                     if (sel := clean | ((kind == i) & ~clean)).sum() > 2}
  return overall, by_kind


def target_check(config, evals: list[results.BenchmarkEval], rho: Mapping[str, float]
                 ) -> dict[str, Any]:
  """The demo's targets: the best exit's pAUC at FMR 1e-3 (fiqa mode) relative to `random`, and
  its Spearman correlation with -severity."""
  r = evals[0]
  m = r.modes["fiqa"]
  f = int(np.argmin(np.abs(np.log(r.fmrs) - np.log(float(config.targets.fmr)))))
  rnd = r.names.index(results.RANDOM)
  exits = [s for s, c in enumerate(r.columns) if c.kind == "exit"]
  best = min(exits, key=lambda s: m.pauc[s, f])
  ratio = float(m.pauc[best, f] / m.pauc[rnd, f]) if m.pauc[rnd, f] > 0 else float("nan")
  name = r.names[best]
  oracle = r.names.index("oracle") if "oracle" in r.names else None
  return {
      "fmr": float(r.fmrs[f]), "best_exit": name, "best_exit_pauc": float(m.pauc[best, f]),
      "random_pauc": float(m.pauc[rnd, f]), "ratio_to_random": round(ratio, 4),
      "oracle_ratio_to_random": (round(float(m.pauc[oracle, f] / m.pauc[rnd, f]), 4)
                                 if oracle is not None and m.pauc[rnd, f] > 0 else None),
      "spearman": rho[name],
      "max_ratio_to_random": float(config.targets.max_ratio_to_random),
      "min_spearman": float(config.targets.min_spearman),
      "met": bool(ratio <= config.targets.max_ratio_to_random
                  and rho[name] >= config.targets.min_spearman)}


def train_model(train_cfg) -> str:
  """Trains (or resumes) the demo model; a finished training with the same config is reused
  without rendering its data again. Returns the exported model directory."""
  model_dir = os.path.join(train_cfg.output, "model")
  done_file = os.path.join(train_cfg.output, "trained_config.json")
  settings = trainer.resume_relevant(train_cfg)
  fp = stages.fingerprint(settings)
  if os.path.isdir(model_dir) and os.path.isfile(done_file) and files.read_json(done_file) == fp:
    logging.info("reusing the trained model in %s", model_dir)
    return model_dir
  data, pairs = train_data.build_data(train_cfg)
  trainer.train(train_cfg, data, pairs)
  if not os.path.isdir(model_dir):
    raise RuntimeError(f"training did not export {model_dir}; is config.train.stop_after set?")
  files.write_json(done_file, fp)
  return model_dir


def run(config) -> dict[str, Any]:
  started = time.time()
  config = ml_collections.ConfigDict(config.to_dict())     # a copy: the caller's stays as given
  output = config.output
  train_cfg = config.train
  train_cfg.output = train_cfg.get("output", "") or os.path.join(output, "train")
  train_cfg.seed = config.seed
  t0 = time.time()
  model_dir = train_model(train_cfg)
  seconds = {"train": round(time.time() - t0, 1)}

  t0 = time.time()
  sizes = train_data.synthetic_sizes(config.train.data, config.test.per_identity)
  bench = early_exit.synthetic_split(config, "test", sizes)   # identity-disjoint, degraded
  severity, kind = bench.extra["severity"], bench.extra["kind"]
  seconds["test_data"] = round(time.time() - t0, 1)
  config.quality_model.path = f"vitfiqa_tiny={model_dir}"
  quality = pipeline.load_quality_models(config)
  t0 = time.time()
  ev = pipeline.evaluate(config, [bench], quality,
                         extra_columns=lambda b: {"oracle": ("oracle", -severity)})
  seconds["evaluate"] = round(time.time() - t0, 1)
  cols, image_q = ev.columns[early_exit.SYNTHETIC]
  rho, rho_kind = severity_correlations([c.name for c in cols], image_q, severity, kind)
  check = target_check(config, ev.results, rho)
  t0 = time.time()      # early exits: calibrated on the val split, the test scores reused
  exits = early_exit.analyse(config, early_exit.synthetic_split(config, "val", sizes), bench,
                             quality[0], ev.cache, quality)
  if parallel.is_writer():
    store = config.early_exit.mapping.get("store_with_model", True)
    early_exit_report.write(os.path.join(output, "early_exit"), exits["summary"],
                            exits["mapping"], model_dir=quality[0].path
                            if store and os.path.isdir(quality[0].path) else None)
  seconds["early_exit"] = round(time.time() - t0, 1)
  seconds["total"] = round(time.time() - started, 1)
  verdict = "met" if check["met"] else "NOT met"
  notes = [
      f"Synthetic faces: {bench.num_images} test images of "
      f"{len(np.unique(bench.extra['identity']))} "
      f"identities unseen in training, {len(bench.is_genuine)} pairs "
      f"({int(bench.is_genuine.sum())} genuine); FR model = the quality model's own feature head. "
      f"`oracle` = minus the true degradation severity; `random` = seeded random quality.",
      f"Targets ({verdict}): best exit `{check['best_exit']}` pAUC at FMR {check['fmr']:g} = "
      f"{check['ratio_to_random']:.3f} x random (target <= {check['max_ratio_to_random']}); "
      f"Spearman(quality, -severity) = {check['spearman']:.3f} (target >= "
      f"{check['min_spearman']}); oracle = {check['oracle_ratio_to_random']} x random.",
      f"Time: {seconds['total']:.0f} s (training {seconds['train']:.0f} s, test data "
      f"{seconds['test_data']:.0f} s, evaluation {seconds['evaluate']:.0f} s, early exits "
      f"{seconds['early_exit']:.0f} s).",
      f"Early exits (early_exit/early_exit.md; thresholds calibrated on the identity-disjoint "
      f"val split): {exits['headline']['text']}.",
  ]
  rho_rows = ["", "## Spearman(quality, -severity)", "",
              "| quality | all | " + " | ".join(synthetic.DEGRADATIONS) + " |",
              "|" + "---|" * (2 + len(synthetic.DEGRADATIONS))]
  for name in rho:
    rho_rows.append(f"| {name} | {rho[name]:.3f} | " + " | ".join(
        f"{rho_kind[name].get(k, float('nan')):.3f}" for k in synthetic.DEGRADATIONS) + " |")
  extra = {"spearman_vs_severity": rho, "spearman_by_degradation": rho_kind, "targets": check,
           "seconds": seconds, "early_exit": exits["headline"]}
  out = eval_task.write_report(config, ev, [bench], quality, extra=extra,
                              title="exfiqa-jax demo: tiny ViT-FIQA on synthetic faces",
                              notes=notes, footer=rho_rows)
  log = logging.info if check["met"] else logging.warning
  log("demo targets %s: %s", verdict, check)
  logging.info("demo written to %s (%.0f s)", output, seconds["total"])
  return {**out, "targets": check, "spearman_vs_severity": rho, "seconds": seconds,
          "computed": ev.cache.computed()}
