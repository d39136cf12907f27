"""The early-exit study (configs/early_exit.py; docs/evaluation.md, "Early exits and thresholds"):
fixed exits, the fusions and the calibrated cascade, calibrated on one split of a benchmark and
evaluated on another, identity-disjoint.

  1. the splits: the synthetic faces' "val" (calibrates) and "test" (`synthetic_split`), or any
     image-pair benchmark split by identity (`split_benchmark`, calibrate/splits.py);
  2. every exit score of both splits in one full pass (the eval pipeline's cached stages,
     evaluation/pipeline.py), FR comparisons of the evaluation split (and of the calibration
     split when the threshold table asks for FNMR targets);
  3. on the calibration split: τ, the threshold table (discard fractions and FNMR targets, with
     bootstrap intervals; calibrate/thresholds.py), the 0–100 mapping (quality_mapping.py), the
     learned fusion `ex_fiqa_fit` (early_exit.fusion_fit; its weights fitted on this split's
     pairs), the fixed columns and the cascades (calibrate/early_exit.py);
  4. on the evaluation split: pAUC-EDC (`fiqa` mode) of every column and the baselines, and
     images/s of the real programs (QualityModel.score(exit=k), QualityModel.cascade) on a small
     subset, where the engine's decisions are checked against the prediction.
`analyse` returns the summary (what report/early_exit.py writes) and the mapping; it is itself a
cached stage, so a rerun recomputes nothing.
"""
from __future__ import annotations

import json
import math
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from exfiqa_jax import columns, files, models, parallel, quality_mapping
from exfiqa_jax.calibrate import early_exit as study
from exfiqa_jax.calibrate import cascade, splits, thresholds
from exfiqa_jax.data import synthetic
from exfiqa_jax.evaluation import benchmarks, external, pipeline, stages
from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.metrics import comparisons, edc
from exfiqa_jax.models import cascade_cost
from exfiqa_jax.models import exits as exits_lib

SYNTHETIC = "synthetic_faces"


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------
def synthetic_split(config, split: str) -> Benchmark:
  """A degraded synthetic split with its pairs, as the demo's test split (exfiqa_jax/tasks/
  demo.py): "test" is the demo's `synthetic_faces`, "val" calibrates; identities split as the
  training data's (config.train.data), config.test.per_identity images each."""
  t = config.test
  sizes = synthetic.config_sizes(config.train.data, t.per_identity)
  faces = synthetic.make_split(config.seed, split, sizes, clean_fraction=t.clean_fraction,
                               gamma=float(config.train.data.get("gamma", synthetic.GAMMA)))
  pairs, genuine = synthetic.make_pairs(faces.label, config.seed, t.impostors_per_genuine)
  name = SYNTHETIC if split == "test" else f"{SYNTHETIC}_{split}"
  return benchmarks.array_benchmark(name, faces.images, faces.names, pairs, genuine,
                                    extra={"severity": faces.severity, "kind": faces.kind,
                                           "identity": faces.label})


def _subset(bench: Benchmark, rows: np.ndarray, part: str) -> Benchmark:
  """The images `rows` of `bench` and the pairs inside them (renumbered)."""
  index = np.full(bench.num_images, -1, np.int64)
  index[rows] = np.arange(len(rows))
  inside = (index[bench.pairs[:, 0]] >= 0) & (index[bench.pairs[:, 1]] >= 0)
  pairs = index[bench.pairs[inside]]
  gen = bench.is_genuine[inside]
  if gen.all() or not gen.any():
    raise ValueError(f"the {part} split of {bench.name} has {int(gen.sum())} genuine and "
                     f"{int((~gen).sum())} impostor pairs; it needs both (a larger benchmark "
                     "or another early_exit.split.fraction)")
  names = (None if bench.read_names is None         # the parent's names without decoding
           else lambda r: bench.read_names(rows[np.asarray(r)]))
  return Benchmark(f"{bench.name}_{part}", len(rows), lambda r: bench.read(rows[np.asarray(r)]),
                   "image", gen, {"parent": bench.identity, "part": part, "rows": rows},
                   pairs=pairs, extra={k: np.asarray(v)[rows] for k, v in bench.extra.items()},
                   read_names=names)


def image_groups(bench: Benchmark) -> tuple[np.ndarray, str]:
  """(group per image, how) of `bench` (splits.image_groups: its identity labels
  extra["identity"], else connected components of the pair graph, else every image alone)."""
  return splits.image_groups(bench.num_images, bench.pairs, bench.extra.get("identity"))


def split_benchmark(bench: Benchmark, fraction: float = 0.5, seed: int = 0
                    ) -> tuple[Benchmark, Benchmark, str]:
  """(calibration, evaluation, how): identity-disjoint when per-image labels exist
  (extra["identity"]); else whole connected components of the pair graph (a .bin set: every pair
  its own component), so no comparison is lost; else (one giant component, e.g. Adience) by
  image, dropping the pairs across the split."""
  if bench.pair_kind != "image":
    raise ValueError(f"{bench.name} compares templates; early_exit splits image-pair benchmarks "
                     "(the synthetic faces, .bin sets, XQLFW, Adience)")
  groups, how = image_groups(bench)
  in_cal = splits.split_groups(groups, fraction, seed)
  cal_rows, ev_rows = np.flatnonzero(in_cal), np.flatnonzero(~in_cal)
  return _subset(bench, cal_rows, "calibration"), _subset(bench, ev_rows, "evaluation"), how


# ------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------
def analyse(config, cal: Benchmark, ev: Benchmark, spec: pipeline.QualitySpec,
            cache: stages.StageCache, quality: Sequence[pipeline.QualitySpec] | None = None,
            extra: Mapping[str, Any] | None = None,
            scores: Sequence[external.ExternalScores] = ()) -> dict[str, Any]:
  """Calibrate on `cal`, evaluate on `ev` (module docstring): {"summary", "rows", "headline",
  "mapping"}. Reuses the cached stages of `cache` (the demo passes its own: nothing is scored
  twice) and is itself a cached stage (`early_exit/<benchmark>/<model>`; images/s are those
  measured when it was computed). `extra` goes into the summary. `scores`: other methods' score
  files, matched to the evaluation split's images before any stage and reported beside the
  baselines."""
  s = config.early_exit
  quality = list(quality or [spec])
  model = spec.model
  if not model.has_exits:
    raise ValueError(f"{spec.name} (mode {model.mode!r}) has no exit scores: early exits need a "
                     "ViT-FIQA quality model")
  if getattr(spec, "exit", 0) not in (0, model.num_exits):
    raise ValueError(f"early_exit compares every exit with full depth; leave --config.exit at 0 "
                     f"(got {spec.exit})")
  fr_name, fr_path = pipeline.fr_items(config, quality)[0]
  names = benchmarks.image_names(ev, 0, ev.num_images) if scores else []
  scored = {e.name: e.image_quality(ev.name, names) for e in scores}
  q_cal = pipeline.quality_stage(cache, cal, spec, config)
  q_ev = pipeline.quality_stage(cache, ev, spec, config)
  emb = pipeline.embed_stage(cache, ev, fr_name, fr_path, quality, config)
  cmp = pipeline.compare_stage(cache, ev, fr_name, emb)
  cmp_cal = None
  if len(s.thresholds.fnmr) or _fit_fusion(s):
    emb_cal = pipeline.embed_stage(cache, cal, fr_name, fr_path, quality, config)
    cmp_cal = pipeline.compare_stage(cache, cal, fr_name, emb_cal)
  deps = {"quality_calibration": q_cal, "quality_evaluation": q_ev, "compare": cmp,
          "compare_calibration": cmp_cal, "settings": s.to_dict(), "fr_model": fr_name,
          "seed": int(config.seed), "pauc_limit": float(config.eval.pauc_limit.get("fiqa", 0.3)),
          "model_config": model.model_config, "splits": [cal.name, ev.name],
          "extra": dict(extra or {}),
          "cascade_cost": {**cascade_cost.cost_key(model.model_config, model.dtype),
                           "batch_size": model.batch_size},   # the device the costs are of
          **({"score_files": {e.name: {**e.identity(), "values": scored[e.name]}
                              for e in scores}} if scores else {})}

  def compute():
    summary, mapping = _compute(config, cal, ev, spec, q_cal, q_ev, cmp, cmp_cal, fr_name,
                                scored)
    summary.update(dict(extra or {}))
    return {"summary": np.asarray(json.dumps(summary, default=_plain)),
            "mapping": np.asarray(json.dumps(mapping.to_dict()))}

  stage = cache.run(f"early_exit/{files.slug(ev.name)}/{files.slug(spec.name)}", deps, compute)
  summary = json.loads(str(stage["summary"]))
  mapping = quality_mapping.QualityMapping.from_dict(json.loads(str(stage["mapping"])))
  logging.info("early exits: %s", summary["headline"]["text"])
  return {"summary": summary, "rows": summary["rows"], "headline": summary["headline"],
          "mapping": mapping}


def _plain(obj: Any) -> Any:
  """JSON for numpy scalars and arrays."""
  if isinstance(obj, (np.generic, np.ndarray)):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _compute(config, cal: Benchmark, ev: Benchmark, spec: pipeline.QualitySpec,
             q_cal: stages.Stage, q_ev: stages.Stage, cmp: stages.Stage,
             cmp_cal: stages.Stage | None, fr_name: str,
             scored: Mapping[str, np.ndarray] | None = None
             ) -> tuple[dict[str, Any], quality_mapping.QualityMapping]:
  """The numbers of `analyse`, in order: τ and the threshold table, the 0–100 mapping (both on
  the calibration split), the fixed exits and fusions, the cascades, their pAUC on the
  evaluation split (and the score files' `scored`, quality per evaluation image), measured
  speed. Returns (summary, mapping)."""
  started = time.time()
  s = config.early_exit
  model = spec.model
  cfg = model.model_config
  depth = model.num_exits
  s_cal = np.asarray(q_cal["exit_scores"], np.float32)
  s_ev = np.asarray(q_ev["exit_scores"], np.float32)
  seed = int(config.seed)
  th = s.thresholds
  tau, tau_info = study.pick_tau(s_cal[:, -1], float(s.tau.discard),
                                 float(s.tau.get("value", float("nan"))),
                                 int(th.resamples), seed, float(th.alpha))
  table = _threshold_table(s, s_cal[:, -1], cal, cmp_cal, seed)
  mapping = quality_mapping.fit_mapping(
      q_cal.arrays, kind=str(s.mapping.kind), knots=int(s.mapping.knots),
      meta={"benchmark": cal.name, "model": spec.path})
  per_exit, g_fusion = models.gflops(cfg)
  exits = exits_lib.check_exits(tuple(s.cascade.exits) or exits_lib.default_exits(depth), depth)
  cost_model = _cost_model(config, model)
  limit = float(config.eval.pauc_limit.get("fiqa", edc.PAUC_LIMIT))
  fused_cal, fused_ev, fit_info = _fusions(s, cal, q_cal, q_ev, cmp_cal, limit)
  cols = study.fixed_columns(s_cal, s_ev, fused_cal, fused_ev, per_exit, g_fusion, tau,
                             tau_info["discard_calibration"])

  def costs(ex: tuple[int, ...]) -> np.ndarray:
    return exits_lib.cascade_gflops(cfg, ex, np.asarray(ex))

  cascade_cols, cascades = study.cascade_columns(
      s_cal, s_ev, exits, tau, costs, float(per_exit[-1]), mapping.columns,
      [float(t) for t in s.cascade.targets], image_groups(cal)[0],
      robust=bool(s.cascade.get("robust", True)), folds=int(s.cascade.get("folds", 5)),
      prune_exits=bool(s.cascade.prune_exits), seed=seed,
      **_seconds(cost_model, model, s, exits))
  cols += cascade_cols
  rows = [row for _, row in cols]
  baseline_pauc = _pauc(ev, cmp, cols, float(s.fmr), limit, seed, scored)
  timing = _measure(model, ev, s, rows, cascades, s_ev, depth, cost_model)  # a subset
  device = parallel.device_info()
  headline = study.headline(rows, float(s.cascade.headline), timing,
                            parallel.device_name(device))
  if cost_model is not None:
    cost_model.save()
    timing["cost_model"] = cost_model.to_dict()
  summary = {
      "benchmark": {"calibration": {"name": cal.name, "images": cal.num_images},
                    "evaluation": {"name": ev.name, "images": ev.num_images,
                                   "pairs": int(len(ev.is_genuine)),
                                   "genuine": int(ev.is_genuine.sum())}},
      "model": spec.path, "fr_model": fr_name, "depth": depth,
      "fmr": float(s.fmr), "mode": "fiqa", "pauc_limit": limit,
      "gflops_per_exit": [float(g) for g in per_exit], "gflops_fusion": float(g_fusion),
      "exits": list(exits), "tau": tau_info, "thresholds": table,
      "rows": [dict(r) for r in rows],
      "baselines": baseline_pauc,
      "cascades": [{k: v for k, v in c.items() if not k.startswith("_")} for c in cascades],
      "timing": timing, "headline": headline, "mapping": {"kind": mapping.kind},
      "device": device}
  if fit_info is not None:
    summary["fusion_fit"] = fit_info
  summary["seconds"] = round(time.time() - started, 1)
  return summary, mapping


COSTS = ("measured", "gflops")     # early_exit.cascade.cost


def _cost_model(config, model) -> cascade_cost.CostModel | None:
  """The measured cost model of `model` on this device (kept beside the compilation cache when
  one is on, as main.py turns it on; else in memory), or None where nothing is timed:
  cascade.cost "gflops" with timing.images 0, or several hosts."""
  s = config.early_exit
  cost = str(s.cascade.get("cost", "measured"))
  if cost not in COSTS:
    raise ValueError(f"--config.early_exit.cascade.cost={cost!r} is not one of {COSTS}")
  if jax.process_count() > 1 or (cost == "gflops" and int(s.timing.images) <= 0):
    if cost == "measured":
      logging.warning("cascade costs are measured on one host; this multi-host run calibrates "
                      "the cascade for GFLOPs (--config.early_exit.cascade.cost=gflops)")
    return None
  folder = cascade_cost.CostModel.folder_for(jax.config.jax_compilation_cache_dir)
  return model.cascade_costs(
      folder, repeats=int(s.cascade.get("cost_repeats", 5)),
      min_seconds=float(s.cascade.get("cost_min_seconds", cascade_cost.MIN_SECONDS)))


def _seconds(cost_model: cascade_cost.CostModel | None, model, s, exits: tuple[int, ...]
             ) -> dict[str, Any]:
  """cascade_columns' `seconds`, `full_seconds`, `min_speedup` when the calibration minimises
  time (early_exit settings `s`: cascade.cost "measured"); every entry a calibration over the
  candidate `exits` can use is measured first, together (CostModel.prepare)."""
  if cost_model is None or str(s.cascade.get("cost", "measured")) != "measured":
    return {}
  big = exits_lib.bucket_ladder(model.batch_size)[-1]
  cost_model.prepare(exits, big)
  return {"seconds": lambda ex: cost_model.per_image(ex, big),
          "full_seconds": cost_model.full_per_image(big),
          "min_speedup": float(s.cascade.get("min_speedup", 1.0))}


def _fusions(s, cal: Benchmark, q_cal: stages.Stage, q_ev: stages.Stage,
             cmp_cal: stages.Stage | None, limit: float
             ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any] | None]:
  """({name: calibration split's}, {name: evaluation split's}, how ex_fiqa_fit was fitted or
  None): the model's fusions, and the learned one when early_exit.fusion_fit asks for it (its
  weights fitted on the calibration split's pairs only)."""
  fused_cal = {f: q_cal[f] for f in columns.FUSIONS}
  fused_ev = {f: q_ev[f] for f in columns.FUSIONS}
  if not _fit_fusion(s):
    return fused_cal, fused_ev, None
  ff = s.fusion_fit
  fit_cal, fit_ev, info = study.learned_fusion(
      np.asarray(q_cal["exit_scores"], np.float32), cal.pairs, cmp_cal["scores"],
      cmp_cal["is_genuine"], np.asarray(q_ev["exit_scores"], np.float32), float(s.fmr), limit,
      int(ff.steps), float(ff.learning_rate), float(ff.temperature), str(ff.init),
      str(ff.normalization))
  fused_cal[columns.EX_FIQA_FIT], fused_ev[columns.EX_FIQA_FIT] = fit_cal, fit_ev
  return fused_cal, fused_ev, {**info, "fitted_on": cal.name}


def _fit_fusion(s) -> bool:
  """Whether the study fits the learned fusion (early_exit.fusion_fit.enabled)."""
  return bool(s.get("fusion_fit", {}).get("enabled", False))


def _threshold_table(s, full: np.ndarray, cal: Benchmark, cmp_cal: stages.Stage | None,
                     seed: int) -> dict[str, list]:
  """Thresholds of the full-depth score `full` by discard fraction and by FNMR target (the
  calibration split; its comparisons `cmp_cal`, None: no FNMR rows)."""
  th = s.thresholds
  table = {"discard": [thresholds.discard_threshold(
      full, float(f), resamples=int(th.resamples), seed=seed, alpha=float(th.alpha)).to_dict()
                       for f in th.discard], "fnmr": []}
  if cmp_cal is not None:
    pq_cal = pipeline.pair_quality_fn(cal, cmp_cal)(full[None])[0]
    table["fnmr"] = [p.to_dict() for p in thresholds.fnmr_thresholds(
        cmp_cal["scores"], cmp_cal["is_genuine"], pq_cal, [float(t) for t in th.fnmr],
        fmr=float(th.get("fmr", s.fmr)), resamples=int(th.fnmr_resamples), seed=seed,
        alpha=float(th.alpha))]
  return table


def _pauc(ev: Benchmark, cmp: stages.Stage, cols: list[study.Column], fmr: float, limit: float,
          seed: int, scored: Mapping[str, np.ndarray] | None = None) -> dict[str, float]:
  """Sets each row's "pauc" (fiqa mode, evaluation split); returns the baselines' pAUC
  (random, the oracle where the data set knows each image's severity, every score file)."""
  baselines = {columns.RANDOM: comparisons.random_quality(ev.num_images, seed)}
  if "severity" in ev.extra:
    baselines[columns.ORACLE] = -np.asarray(ev.extra["severity"], np.float32)
  baselines.update(scored or {})
  all_q = np.stack([q for q, _ in cols] + list(baselines.values())).astype(np.float32)
  pq = pipeline.pair_quality_fn(ev, cmp)(all_q)
  curves = edc.edc_curves(cmp["scores"], cmp["is_genuine"], pq, (fmr,), edc.FIQA_DISCARD,
                          "fiqa", pauc_limit=limit)
  pauc = np.asarray(curves.pauc)[:, 0]
  for (_, row), p in zip(cols, pauc):
    row["pauc"] = float(p)
  return {k: float(p) for k, p in zip(baselines, pauc[len(cols):])}


def _measure(model, ev: Benchmark, s, rows: list[dict], cascades: list[dict],
             s_ev: np.ndarray, depth: int,
             cost_model: cascade_cost.CostModel | None = None) -> dict[str, Any]:
  """images/s of every fixed-exit program and the cascades on a subset, beside the cost
  model's prediction for the same run; the engine's decisions there against the prediction
  from the full-pass scores (mismatches are reported)."""
  n = min(int(s.timing.images), ev.num_images)
  info: dict[str, Any] = {"images": n, "repeats": int(s.timing.repeats)}
  for r in rows:
    r["images_per_second"] = r["predicted_images_per_second"] = float("nan")
  if n <= 0 or jax.process_count() > 1:
    info["skipped"] = "timing.images = 0" if n <= 0 else "multi-host run (single-host programs)"
    return info
  images, _ = ev.read(np.arange(n))
  by_method = {r["method"]: r for r in rows}
  fixed = range(1, depth + 1) if s.timing.get("fixed_exits", True) else (depth,)
  routes = {columns.exit_name(k): (lambda k=k: model.score(images, exit=k)) for k in fixed}
  for fn in routes.values():                     # the warm-up (compilation)
    fn()
  sizes = exits_lib.bucket_ladder(model.batch_size)
  headline = float(s.cascade.headline)
  mismatch, predicted = {}, {}
  for c in cascades:
    if not s.timing.get("all_targets", True) and not math.isclose(c["target"], headline):
      continue
    thr, name = c["_thresholds"], study.cascade_name(c["target"])
    result = model.cascade(images, thr)          # also the warm-up (compilation)
    pred = cascade.simulate_cascade(s_ev[:n], thr.exits, thr.reject, thr.accept, thr.tau)
    mismatch[f"{c['target']:g}"] = int(np.sum((np.asarray(result.exit) != pred.exit)
                                              | (np.asarray(result.accept) != pred.accept)))
    routes[name] = lambda thr=thr: model.cascade(images, thr)
    if cost_model is not None:
      reached = [int(np.sum(pred.stage >= i)) for i in range(len(thr.exits))]
      predicted[name] = cost_model.predict_seconds(thr.exits, reached, sizes)
  if cost_model is not None:
    predicted[columns.exit_name(depth)] = cost_model.predict_full_seconds(n, sizes)
  # every program timed in the same rounds, in turn: load from other jobs falls on all alike
  seconds = cascade_cost.time_calls(routes, int(s.timing.repeats), warmups=0,
                                    min_seconds=float(s.timing.get("min_seconds", 0.0)))
  for name, t in seconds.items():
    by_method[name]["images_per_second"] = n / t
  for name, t in predicted.items():
    by_method[name]["predicted_images_per_second"] = n / t
  full_rate = by_method[columns.exit_name(depth)]["images_per_second"]
  for r in rows:                # the full pass computes every exit, hence every fusion
    if r["kind"] == "fusion":
      r["images_per_second"] = full_rate
  info["engine_vs_prediction_mismatches"] = mismatch
  return info
