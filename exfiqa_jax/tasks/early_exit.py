"""Task "early_exit": fixed exits, the cascade and calibrated thresholds (configs/early_exit.py).

For one benchmark (the synthetic faces by default) the task calibrates on one split and
evaluates on another, identity-disjoint (docs/evaluation.md, "Early exits and thresholds"):
  1. every exit score of both splits in one full pass (the eval pipeline's cached stages,
     exfiqa_jax/evaluation/pipeline.py), FR comparisons of the evaluation split;
  2. tau, the full-depth decision threshold (accept iff exit_L >= tau): by default the value
     that discards 20 % of the calibration set (exfiqa_jax/calibrate/thresholds.py); a threshold
     table (discard fractions and FNMR targets, with bootstrap intervals);
  3. the 0–100 mapping per exit, fitted on the calibration split → quality_mapping.json (also
     into the model directory: the score task then writes q100_* columns);
  4. per agreement target, the cascade's reject/accept thresholds calibrated on the calibration
     split (cascade.robust_cascade: how conservative, chosen by identity-grouped
     cross-validation, since thresholds at the calibration data's edges are optimistic;
     cascade.robust=False: the plain optimum, cascade.calibrate_cascade); its behaviour on
     the evaluation split predicted exactly from the full-pass exit matrix
     (cascade.simulate_cascade, the engine's rule);
  5. pAUC-EDC (FMR 1e-3, `fiqa` mode) of every fixed exit, the fusions and each cascade (its
     quality = the 0–100 value at the exit it left, so the exits are comparable), mean GFLOPs
     per image (exfiqa_jax.models.exits.cascade_gflops), agreement with full depth, fraction
     decided at each exit; images/s measured with the real programs (QualityModel.score(exit=k),
     QualityModel.cascade) on a small subset, where the engine's decisions are also checked
     against the prediction.
Writes (process 0, atomically) early_exit.csv, early_exit.json, early_exit.md,
quality_mapping.json and plots/early_exit_pauc_vs_gflops.png, plots/early_exit_decided.png.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from absl import logging

from exfiqa_jax import files, models, parallel, report
from exfiqa_jax.data import synthetic
from exfiqa_jax.evaluation import benchmarks, pipeline, results, stages
from exfiqa_jax import quality_mapping
from exfiqa_jax.calibrate import cascade, splits, thresholds
from exfiqa_jax.metrics import edc
from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.models import exits as exits_lib
from exfiqa_jax.train import data as train_data

SYNTHETIC = "synthetic_faces"
CSV_COLUMNS = ("method", "kind", "target", "exits", "mean_gflops", "saved", "pauc",
               "agreement", "agreement_calibration", "images_per_second")


# ------------------------------------------------------------------------------------------
# Splits
# ------------------------------------------------------------------------------------------
def synthetic_split(config, split: str) -> Benchmark:
  """A degraded synthetic split with its pairs, built as the demo builds its test split
  (exfiqa_jax/tasks/demo.py): "test" is the demo's `synthetic_faces`, "val" calibrates."""
  t = config.test
  sizes = train_data.synthetic_sizes(config.train.data, t.per_identity)
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
  return Benchmark(f"{bench.name}_{part}", len(rows), lambda r: bench.read(rows[np.asarray(r)]),
                   "image", gen, {"parent": bench.identity, "part": part, "rows": rows},
                   pairs=pairs, extra={k: np.asarray(v)[rows] for k, v in bench.extra.items()})


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
# The analysis
# ------------------------------------------------------------------------------------------
def _fixed_tau(cal_q: np.ndarray, frac: float) -> float:
  return thresholds.discard_threshold(cal_q, frac, resamples=0).threshold


def _time_it(fn, repeats: int, warm: bool = False) -> float:
  """Best wall time of `repeats` calls, after one warm-up call (compilation) unless `warm`."""
  if not warm:
    fn()
  best = math.inf
  for _ in range(max(1, repeats)):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def analyse(config, cal: Benchmark, ev: Benchmark, spec: pipeline.QualitySpec,
            cache: stages.StageCache, output: str,
            quality: Sequence[pipeline.QualitySpec] | None = None,
            extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """Calibrate on `cal`, evaluate on `ev` (module docstring); writes into `output`. Reuses the
  cached stages of `cache` (the demo passes its own: nothing is scored twice) and is itself a
  cached stage (`early_exit/<benchmark>/<model>`: a rerun rewrites the files from it; images/s
  are those measured when it was computed)."""
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
  q_cal = pipeline.quality_stage(cache, cal, spec, config)
  q_ev = pipeline.quality_stage(cache, ev, spec, config)
  emb = pipeline.embed_stage(cache, ev, fr_name, fr_path, quality, config)
  cmp = pipeline.compare_stage(cache, ev, fr_name, emb)
  cmp_cal = None
  if len(s.thresholds.fnmr):
    emb_cal = pipeline.embed_stage(cache, cal, fr_name, fr_path, quality, config)
    cmp_cal = pipeline.compare_stage(cache, cal, fr_name, emb_cal)
  deps = {"quality_calibration": q_cal, "quality_evaluation": q_ev, "compare": cmp,
          "compare_calibration": cmp_cal, "settings": s.to_dict(), "fr_model": fr_name,
          "seed": int(config.seed), "pauc_limit": float(config.eval.pauc_limit.get("fiqa", 0.3)),
          "model_config": model.model_config, "splits": [cal.name, ev.name],
          "extra": dict(extra or {})}

  def compute():
    summary, mapping = _compute(config, cal, ev, spec, q_cal, q_ev, cmp, cmp_cal, fr_name)
    summary.update(dict(extra or {}))
    return {"summary": np.asarray(json.dumps(summary, default=_plain)),
            "mapping": np.asarray(json.dumps(mapping.to_dict()))}

  stage = cache.run(f"early_exit/{files.slug(ev.name)}/{files.slug(spec.name)}", deps, compute)
  summary = json.loads(str(stage["summary"]))
  mapping = quality_mapping.QualityMapping.from_dict(json.loads(str(stage["mapping"])))
  rows = summary["rows"]
  written = {}
  if parallel.is_writer():
    written = write_outputs(output, summary, rows, mapping, int(summary["depth"]),
                            summary["baselines"])
    if s.mapping.get("store_with_model", True) and os.path.isdir(spec.path):
      written["model_mapping"] = _store_mapping(spec.path, mapping)
  logging.info("early exits: %s", summary["headline"]["text"])
  return {**written, "summary": summary, "rows": rows, "headline": summary["headline"],
          "mapping": mapping}


def _plain(obj: Any) -> Any:
  """JSON for numpy scalars and arrays."""
  if isinstance(obj, (np.generic, np.ndarray)):
    return obj.tolist()
  raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _compute(config, cal: Benchmark, ev: Benchmark, spec: pipeline.QualitySpec,
             q_cal: stages.Stage, q_ev: stages.Stage, cmp: stages.Stage,
             cmp_cal: stages.Stage | None, fr_name: str
             ) -> tuple[dict[str, Any], quality_mapping.QualityMapping]:
  """The numbers of `analyse`, in order: τ and the threshold table, the 0–100 mapping (both on
  the calibration split), the fixed exits and fusions, the cascades, their pAUC on the
  evaluation split, measured speed. Returns (summary, mapping)."""
  started = time.time()
  s = config.early_exit
  model = spec.model
  cfg = model.model_config
  depth = model.num_exits
  s_cal = np.asarray(q_cal["exit_scores"], np.float32)
  s_ev = np.asarray(q_ev["exit_scores"], np.float32)
  seed = int(config.seed)
  tau, tau_info, table = _tau_and_thresholds(s, s_cal, cal, cmp_cal, seed)
  mapping = quality_mapping.fit_mapping(
      q_cal.arrays, kind=str(s.mapping.kind), knots=int(s.mapping.knots),
      meta={"benchmark": cal.name, "model": spec.path})
  per_exit, g_fusion = models.gflops(cfg)
  exits = exits_lib.check_exits(tuple(s.cascade.exits) or exits_lib.default_exits(depth), depth)
  columns = _fixed_columns(s_cal, s_ev, q_cal, q_ev, per_exit, g_fusion, tau,
                           tau_info["discard_calibration"])
  cascades = _cascade_columns(s, cfg, s_cal, s_ev, cal, exits, tau, float(per_exit[-1]),
                              mapping, seed, columns)
  rows = [row for _, row in columns]
  limit = float(config.eval.pauc_limit.get("fiqa", edc.PAUC_LIMIT))
  baseline_pauc = _pauc(ev, cmp, columns, float(s.fmr), limit, seed)
  timing = _measure(model, ev, s, rows, cascades, s_ev, depth)   # real programs, a subset
  headline = _headline(rows, cascades, float(s.cascade.headline), timing)
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
      "seconds": round(time.time() - started, 1)}
  return summary, mapping


def _tau_and_thresholds(s, s_cal: np.ndarray, cal: Benchmark, cmp_cal: stages.Stage | None,
                        seed: int) -> tuple[float, dict[str, Any], dict[str, list]]:
  """τ (explicit, or the full-depth score discarding `tau.discard` of the calibration split)
  and the table of thresholds by discard fraction and by FNMR (calibration split)."""
  th = s.thresholds
  full = s_cal[:, -1]

  def by_discard(fraction: float) -> thresholds.ThresholdPick:
    return thresholds.discard_threshold(full, fraction, resamples=int(th.resamples),
                                         seed=seed, alpha=float(th.alpha))

  tau_value = float(s.tau.get("value", float("nan")))
  if math.isfinite(tau_value):
    tau = float(np.float32(tau_value))
    tau_info = {"value": tau, "rule": "explicit",
                "discard_calibration": float(np.mean(full < np.float32(tau)))}
  else:
    pick = by_discard(float(s.tau.discard))
    tau = pick.threshold
    tau_info = {"rule": f"discards {float(s.tau.discard):g} of the calibration set at exit "
                        f"{s_cal.shape[1]}", **pick.to_dict(), "value": tau,
                "discard_calibration": pick.discard}
  table = {"discard": [by_discard(float(f)).to_dict() for f in th.discard], "fnmr": []}
  if cmp_cal is not None:
    pq_cal = pipeline.pair_quality_fn(cal, cmp_cal)(full[None])[0]
    table["fnmr"] = [p.to_dict() for p in thresholds.fnmr_thresholds(
        cmp_cal["scores"], cmp_cal["is_genuine"], pq_cal, [float(t) for t in th.fnmr],
        fmr=float(th.get("fmr", s.fmr)), resamples=int(th.fnmr_resamples), seed=seed,
        alpha=float(th.alpha))]
  return tau, tau_info, table


def _agreement(q: np.ndarray, tau_q: float, full: np.ndarray, tau: float) -> float:
  """Share of images on which `q` at `tau_q` and the full-depth score at τ decide alike."""
  return float(np.mean((q >= np.float32(tau_q)) == (full >= np.float32(tau))))


def _fixed_columns(s_cal: np.ndarray, s_ev: np.ndarray, q_cal: stages.Stage,
                   q_ev: stages.Stage, per_exit: np.ndarray, g_fusion: float, tau: float,
                   frac: float) -> list[tuple[np.ndarray, dict]]:
  """(evaluation-split quality, row) of every fixed exit (exit scores `s_cal`, `s_ev`) and both
  fusions (from `q_cal`, `q_ev`); each is thresholded where it discards the same share of the
  calibration split as τ does at full depth."""
  depth, full = s_cal.shape[1], float(per_exit[-1])
  columns = []
  for k in range(1, depth + 1):
    tau_k = _fixed_tau(s_cal[:, k - 1], frac) if k < depth else tau
    columns.append((s_ev[:, k - 1], dict(
        method=f"exit_{k}", kind="exit", target=float("nan"), exits=str(k),
        mean_gflops=float(per_exit[k - 1]), saved=1 - float(per_exit[k - 1]) / full,
        agreement=_agreement(s_ev[:, k - 1], tau_k, s_ev[:, -1], tau),
        agreement_calibration=_agreement(s_cal[:, k - 1], tau_k, s_cal[:, -1], tau),
        decided=[1.0 if e == k else 0.0 for e in range(1, depth + 1)], threshold=tau_k)))
  for name in ("ex_fiqa_f", "ex_fiqa_fw"):
    f_cal, f_ev = np.asarray(q_cal[name], np.float32), np.asarray(q_ev[name], np.float32)
    tau_f = _fixed_tau(f_cal, frac)
    columns.append((f_ev, dict(
        method=name, kind="fusion", target=float("nan"), exits="all",
        mean_gflops=float(g_fusion), saved=1 - float(g_fusion) / full,
        agreement=_agreement(f_ev, tau_f, s_ev[:, -1], tau),
        agreement_calibration=_agreement(f_cal, tau_f, s_cal[:, -1], tau),
        decided=[0.0] * (depth - 1) + [1.0], threshold=tau_f)))
  return columns


def _cascade_columns(s, cfg, s_cal: np.ndarray, s_ev: np.ndarray, cal: Benchmark,
                     exits: tuple[int, ...], tau: float, full: float,
                     mapping: quality_mapping.QualityMapping, seed: int,
                     columns: list[tuple[np.ndarray, dict]]) -> list[dict[str, Any]]:
  """Calibrates one cascade per agreement target (robust: its conservativeness chosen by
  identity-grouped cross-validation), runs it on the evaluation split, appends its (mapped
  0–100 quality, row) to `columns`; returns the cascades' records."""
  depth = s_cal.shape[1]

  def costs(ex: tuple[int, ...]) -> np.ndarray:
    return exits_lib.cascade_gflops(cfg, ex, np.asarray(ex))

  groups, _ = image_groups(cal)
  memo: dict = {}
  cascades = []
  for target in [float(t) for t in s.cascade.targets]:
    if bool(s.cascade.get("robust", True)):
      rc = cascade.robust_cascade(s_cal, exits, tau, target, costs=costs, full_cost=full,
                                      groups=groups, folds=int(s.cascade.get("folds", 5)),
                                      seed=seed, prune_exits=bool(s.cascade.prune_exits),
                                      memo=memo)
      c, cv = rc.calibration, rc.to_dict()
    else:
      c = cascade.calibrate_cascade(s_cal, exits, tau, target, costs=costs, full_cost=full,
                                        prune_exits=bool(s.cascade.prune_exits))
      cv = c.to_dict()
    out = cascade.simulate_cascade(s_ev, c.exits, c.reject, c.accept, tau)
    mean = out.mean_cost(costs(c.exits))
    q = np.empty(len(s_ev))
    for e in c.exits:
      sel = out.exit == e
      q[sel] = mapping.columns[f"exit_{e}"](out.score[sel])
    per_block = np.zeros(depth)
    per_block[np.asarray(c.exits) - 1] = out.fraction_per_exit()
    thresholds = exits_lib.CascadeThresholds(**c.thresholds())
    columns.append((q.astype(np.float32), dict(
        method=f"cascade@{target:g}", kind="cascade", target=target,
        exits="+".join(str(e) for e in c.exits), mean_gflops=mean, saved=1 - mean / full,
        agreement=out.agreement, agreement_calibration=c.agreement,
        decided=per_block.tolist(), threshold=tau,
        agreement_cv=cv.get("cv_agreement", float("nan")))))
    cascades.append({"target": target, "thresholds": thresholds.to_dict(),
                     "calibration": {k: v for k, v in cv.items()
                                     if k not in ("reject", "accept", "tau", "exits")},
                     "evaluation": {"agreement": out.agreement,
                                    "disagreements": out.disagreements, "mean_gflops": mean,
                                    "saved": 1 - mean / full,
                                    "fraction_per_exit": out.fraction_per_exit().tolist()},
                     "_thresholds": thresholds, "_predicted": out})
  return cascades


def _pauc(ev: Benchmark, cmp: stages.Stage, columns: list[tuple[np.ndarray, dict]],
          fmr: float, limit: float, seed: int) -> dict[str, float]:
  """Sets each row's "pauc" (fiqa mode, evaluation split); returns the baselines' pAUC
  (random, and the oracle where the data set knows each image's severity)."""
  baselines = {results.RANDOM: results.random_quality(ev.num_images, seed)}
  if "severity" in ev.extra:
    baselines["oracle"] = -np.asarray(ev.extra["severity"], np.float32)
  all_q = np.stack([q for q, _ in columns] + list(baselines.values())).astype(np.float32)
  pq = pipeline.pair_quality_fn(ev, cmp)(all_q)
  curves = edc.edc_curves(cmp["scores"], cmp["is_genuine"], pq, (fmr,), edc.FIQA_DISCARD,
                          "fiqa", pauc_limit=limit)
  pauc = np.asarray(curves.pauc)[:, 0]
  for (_, row), p in zip(columns, pauc):
    row["pauc"] = float(p)
  return {k: float(p) for k, p in zip(baselines, pauc[len(columns):])}


def _store_mapping(model_dir: str, mapping: quality_mapping.QualityMapping) -> str:
  """Writes the mapping into the model directory unless the same one is there already."""
  old = quality_mapping.load_mapping(model_dir)
  if old is None or old.to_dict() != mapping.to_dict():
    logging.info("0–100 quality mapping stored with the model: %s",
                 os.path.join(model_dir, quality_mapping.MAPPING_FILE))
    return quality_mapping.save_mapping(model_dir, mapping)
  return os.path.join(model_dir, quality_mapping.MAPPING_FILE)


def _measure(model, ev: Benchmark, s, rows: list[dict], cascades: list[dict],
             s_ev: np.ndarray, depth: int) -> dict[str, Any]:
  """images/s of every fixed-exit program and the cascades on a subset; the engine's decisions
  there against the prediction from the full-pass scores (mismatches are reported)."""
  n = min(int(s.timing.images), ev.num_images)
  info: dict[str, Any] = {"images": n, "repeats": int(s.timing.repeats)}
  for r in rows:
    r["images_per_second"] = float("nan")
  if n <= 0 or jax.process_count() > 1:
    info["skipped"] = "timing.images = 0" if n <= 0 else "multi-host run (single-host programs)"
    return info
  images, _ = ev.read(np.arange(n))
  reps = int(s.timing.repeats)
  by_method = {r["method"]: r for r in rows}
  fixed = range(1, depth + 1) if s.timing.get("fixed_exits", True) else (depth,)
  for k in fixed:
    by_method[f"exit_{k}"]["images_per_second"] = n / _time_it(
        lambda: model.score(images, exit=k), reps)
  full_rate = by_method[f"exit_{depth}"]["images_per_second"]
  for f in ("ex_fiqa_f", "ex_fiqa_fw"):     # the full pass computes every exit and both fusions
    by_method[f]["images_per_second"] = full_rate
  headline = float(s.cascade.headline)
  mismatch = {}
  for c in cascades:
    if not s.timing.get("all_targets", True) and not math.isclose(c["target"], headline):
      continue
    thr = c["_thresholds"]
    result = model.cascade(images, thr)          # also the warm-up (compilation)
    pred = cascade.simulate_cascade(s_ev[:n], thr.exits, thr.reject, thr.accept, thr.tau)
    mismatch[f"{c['target']:g}"] = int(np.sum((np.asarray(result.exit) != pred.exit)
                                              | (np.asarray(result.accept) != pred.accept)))
    by_method[f"cascade@{c['target']:g}"]["images_per_second"] = n / _time_it(
        lambda: model.cascade(images, thr), reps, warm=True)
  info["engine_vs_prediction_mismatches"] = mismatch
  return info


def _headline(rows: list[dict], cascades: list[dict], target: float, timing: Mapping
              ) -> dict[str, Any]:
  """The cascade at the headline agreement target (0.99) in numbers and one sentence."""
  row = next((r for r in rows if r["kind"] == "cascade" and math.isclose(r["target"], target)),
             None)
  full = next(r for r in rows if r["kind"] == "exit" and r["exits"] == str(len(r["decided"])))
  if row is None:
    return {"text": f"no cascade at agreement target {target:g}"}
  cv = row.get("agreement_cv", float("nan"))
  cv_text = f", cross-validated {100 * cv:.2f} %" if math.isfinite(cv) else ""
  speed = (row["images_per_second"] / full["images_per_second"]
           if full["images_per_second"] and math.isfinite(row["images_per_second"]) else None)
  text = (f"at {100 * target:g} % agreement the cascade (exits {row['exits']}) needs "
          f"{row['mean_gflops']:.3g} of {full['mean_gflops']:.3g} GFLOPs per image: "
          f"{100 * row['saved']:.1f} % compute saved, held-out agreement "
          f"{100 * row['agreement']:.2f} % (calibration {100 * row['agreement_calibration']:.2f} "
          f"%{cv_text}), pAUC {1e3 * row['pauc']:.2f} vs {1e3 * full['pauc']:.2f} x1e-3 at full depth")
  if speed is not None:
    text += f", {speed:.2f}x images/s measured on {timing.get('images')} images"
  return {"target": target, "saved": row["saved"], "mean_gflops": row["mean_gflops"],
          "full_gflops": full["mean_gflops"], "agreement": row["agreement"],
          "agreement_calibration": row["agreement_calibration"], "agreement_cv": cv,
          "pauc": row["pauc"],
          "full_pauc": full["pauc"], "exits": row["exits"], "speedup": speed, "text": text}


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------
def write_outputs(output: str, summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]],
                  mapping: quality_mapping.QualityMapping, depth: int,
                  baselines: Mapping[str, float]) -> dict[str, str]:
  decided_cols = [f"decided_exit_{e}" for e in range(1, depth + 1)]
  flat = [{**{k: r[k] for k in CSV_COLUMNS}, **dict(zip(decided_cols, r["decided"]))}
          for r in rows]
  paths = {"csv": os.path.join(output, "early_exit.csv"),
           "json": os.path.join(output, "early_exit.json"),
           "md": os.path.join(output, "early_exit.md"),
           "mapping": os.path.join(output, quality_mapping.MAPPING_FILE)}
  files.write_text(paths["csv"], report.csv_text(flat, list(CSV_COLUMNS) + decided_cols))
  files.write_json(paths["json"], summary)
  files.write_text(paths["md"], markdown(summary, rows))
  quality_mapping.save_mapping(paths["mapping"], mapping)
  paths["plot_pauc"] = plot_pauc_vs_gflops(
      os.path.join(output, "plots", "early_exit_pauc_vs_gflops.png"), rows, baselines,
      summary["fmr"])
  paths["plot_decided"] = plot_decided(os.path.join(output, "plots", "early_exit_decided.png"),
                                       rows, depth)
  return paths


def markdown(summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> str:
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
  fig = report._figure(6.0, 4.2)
  ax = fig.add_subplot(1, 1, 1)
  ex = [r for r in rows if r["kind"] == "exit"]
  ax.plot([r["mean_gflops"] for r in ex], [r["pauc"] for r in ex], "o-", color="C0", ms=4,
          label="fixed exit k")
  for r in ex:
    ax.annotate(r["exits"], (r["mean_gflops"], r["pauc"]), fontsize=6, xytext=(2, 3),
                textcoords="offset points")
  for r in (r for r in rows if r["kind"] == "fusion"):
    ax.plot([r["mean_gflops"]], [r["pauc"]], "*" if r["method"].endswith("fw") else "P", ms=9,
            color="C1" if r["method"].endswith("fw") else "C2", label=r["method"])
  cas = sorted((r for r in rows if r["kind"] == "cascade"), key=lambda r: r["mean_gflops"])
  if cas:
    ax.plot([r["mean_gflops"] for r in cas], [r["pauc"] for r in cas], "s-", color="C3", ms=4,
            label="cascade (agreement target)")
    for r in cas:
      ax.annotate(f"{r['target']:g}", (r["mean_gflops"], r["pauc"]), fontsize=6,
                  xytext=(2, -8), textcoords="offset points", color="C3")
  for i, (k, v) in enumerate(baselines.items()):
    ax.axhline(v, color="k" if k == results.RANDOM else "0.5", ls="--" if k == results.RANDOM
               else ":", lw=0.8, label=k)
  ax.set_xlabel("mean GFLOPs per image")
  ax.set_ylabel("pAUC-EDC")
  ax.set_title(f"pAUC-EDC (FMR {fmr:.0e}, fiqa) vs compute", fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  return report._save(fig, path)


def plot_decided(path: str, rows: Sequence[Mapping[str, Any]], depth: int) -> str:
  """Stacked bars: per cascade agreement target, the fraction of images decided at each exit."""
  cas = [r for r in rows if r["kind"] == "cascade"]
  fig = report._figure(max(4.0, 1.0 + 0.9 * len(cas)), 3.6)
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
  return report._save(fig, path)


# ------------------------------------------------------------------------------------------
# The task
# ------------------------------------------------------------------------------------------
def run(config) -> dict[str, Any]:
  """Task "early_exit" (configs/early_exit.py)."""
  started = time.time()
  quality = pipeline.load_quality_models(config)
  if len(quality) != 1:
    raise ValueError("early_exit analyses one quality model; pass one "
                     "--config.quality_model.path")
  pipeline.fr_items(config, quality)        # a bad FR input fails before any data work
  names = benchmarks.benchmark_names(config)
  if len(names) != 1:
    raise ValueError(f"early_exit takes one benchmark, got {names}")
  if names[0] == SYNTHETIC:
    cal, ev, how = synthetic_split(config, "val"), synthetic_split(config, "test"), "identity"
  else:
    cal, ev, how = split_benchmark(benchmarks.open_benchmark(names[0], config),
                                   float(config.early_exit.split.fraction), int(config.seed))
  logging.info("early exits on %s: calibration %s (%d images), evaluation %s (%d images), "
               "split by %s", names[0], cal.name, cal.num_images, ev.name, ev.num_images, how)
  cache = stages.StageCache(os.path.join(config.output, "cache"),
                            progress=config.get("progress", True))
  out = analyse(config, cal, ev, quality[0], cache, config.output, quality, extra={"split": how})
  logging.info("early-exit analysis written to %s (%.1f s)", config.output, time.time() - started)
  return {**out, "computed": cache.computed()}
