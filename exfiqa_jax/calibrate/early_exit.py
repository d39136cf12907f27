"""The early-exit study's numbers on score matrices (docs/evaluation.md, "Early exits and
thresholds"): what the early_exit job reports for each way of stopping early, given the exit
scores of a calibration split and an evaluation split.

  * `pick_tau`: τ, the full-depth decision threshold (accept iff exit_L >= τ): explicit, or the
    value that discards a share of the calibration split (thresholds.discard_threshold);
  * `learned_fusion`: the exits fused with weights learned on the calibration split
    (calibrate/fusion_fit.py, `ex_fiqa_fit`), applied to both splits;
  * `fixed_columns`: every fixed exit and the fusions, each thresholded where it discards the
    same share of the calibration split as τ does at full depth;
  * `cascade_columns`: per agreement target, the cascade calibrated on the calibration split
    (cascade.robust_cascade, or the plain optimum) and what it does on the evaluation split,
    its quality the 0–100 value at the exit it left (so the exits are comparable);
  * `headline`: the cascade at the headline target in numbers and one sentence.
A column is (evaluation-split quality [N], row); a row holds the CSV's fields (method, kind,
target, exits, mean_gflops, saved, agreement, agreement_calibration, ...). pAUC and images/s
need pairs and a model and are added by exfiqa_jax/evaluation/early_exit.py. Plain NumPy.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from exfiqa_jax import columns as names
from exfiqa_jax import fusion, quality_mapping
from exfiqa_jax.calibrate import cascade, fusion_fit, thresholds
from exfiqa_jax.models import exits as exits_lib

CASCADE_PREFIX = "cascade@"     # a cascade's method name: cascade@<agreement target>

Column = tuple[np.ndarray, dict[str, Any]]


def cascade_name(target: float) -> str:
  """cascade@0.99: the method name of the cascade calibrated for an agreement target."""
  return f"{CASCADE_PREFIX}{target:g}"


def pick_tau(full: np.ndarray, discard: float, value: float = float("nan"),
             resamples: int = 200, seed: int = 0, alpha: float = 0.05
             ) -> tuple[float, dict[str, Any]]:
  """(τ, how): `value` when finite (rounded to float32), else the full-depth score `full` [N] of
  the calibration split that discards `discard` of it (thresholds.discard_threshold, with its
  bootstrap interval)."""
  if math.isfinite(value):
    tau = float(np.float32(value))
    return tau, {"value": tau, "rule": "explicit",
                 "discard_calibration": float(np.mean(full < np.float32(tau)))}
  pick = thresholds.discard_threshold(full, discard, resamples=resamples, seed=seed, alpha=alpha)
  return pick.threshold, {"rule": pick.rule, **pick.to_dict(), "value": pick.threshold,
                          "discard_calibration": pick.discard}


def agreement(q: np.ndarray, tau_q: float, full: np.ndarray, tau: float) -> float:
  """Share of images on which `q` at `tau_q` and the full-depth score at τ decide alike."""
  return float(np.mean((q >= np.float32(tau_q)) == (full >= np.float32(tau))))


def _threshold_at(cal_q: np.ndarray, frac: float) -> float:
  return thresholds.discard_threshold(cal_q, frac, resamples=0).threshold


def learned_fusion(s_cal: np.ndarray, pairs: np.ndarray, scores: np.ndarray,
                   is_genuine: np.ndarray, s_ev: np.ndarray, fmr: float, limit: float,
                   steps: int = 200, learning_rate: float = 0.05, temperature: float = 0.05,
                   init: str = "fw", normalization: str = "none"
                   ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """(fused calibration [N], fused evaluation [M], how): fusion weights (and a per-exit
  normalisation) fitted on the calibration split only — its exit scores `s_cal` [N, L], its
  pairs [P, 2] with their comparison scores and labels — against the pAUC surrogate at `fmr`
  up to `limit` (fusion_fit.fit_fusion_weights), applied to both splits (`s_ev` [M, L])."""
  normalizer = fusion_fit.fit_normalizer(s_cal, normalization)
  fit = fusion_fit.fit_fusion_weights(s_cal, pairs, scores, is_genuine, fmr=fmr, limit=limit,
                                      steps=steps, learning_rate=learning_rate,
                                      temperature=temperature, init=init, normalizer=normalizer)
  fused = [np.asarray(fusion.fuse(normalizer(x), fit.weights), np.float32) for x in (s_cal, s_ev)]
  return fused[0], fused[1], {
      "weights": fit.weights.tolist(), "normalization": normalization, "init": init,
      "steps": int(steps), "learning_rate": float(learning_rate),
      "temperature": float(temperature), "surrogate_initial": fit.initial,
      "surrogate_final": fit.final}


def fixed_columns(s_cal: np.ndarray, s_ev: np.ndarray, fused_cal: Mapping[str, np.ndarray],
                  fused_ev: Mapping[str, np.ndarray], per_exit: np.ndarray, g_fusion: float,
                  tau: float, frac: float) -> list[Column]:
  """Every fixed exit (exit scores `s_cal`, `s_ev` [N, L]) and every fusion in `fused_cal` /
  `fused_ev` ({name: [N]}, GFLOPs `g_fusion`: the full pass), each thresholded where it discards
  `frac` of the calibration split (exit L: at τ itself)."""
  depth, full = s_cal.shape[1], float(per_exit[-1])
  out = []
  for k in range(1, depth + 1):
    tau_k = _threshold_at(s_cal[:, k - 1], frac) if k < depth else tau
    out.append((s_ev[:, k - 1], dict(
        method=names.exit_name(k), kind="exit", target=float("nan"), exits=str(k),
        mean_gflops=float(per_exit[k - 1]), saved=1 - float(per_exit[k - 1]) / full,
        agreement=agreement(s_ev[:, k - 1], tau_k, s_ev[:, -1], tau),
        agreement_calibration=agreement(s_cal[:, k - 1], tau_k, s_cal[:, -1], tau),
        decided=[1.0 if e == k else 0.0 for e in range(1, depth + 1)], threshold=tau_k)))
  for name in fused_cal:
    f_cal, f_ev = np.asarray(fused_cal[name], np.float32), np.asarray(fused_ev[name], np.float32)
    tau_f = _threshold_at(f_cal, frac)
    out.append((f_ev, dict(
        method=name, kind="fusion", target=float("nan"), exits="all",
        mean_gflops=float(g_fusion), saved=1 - float(g_fusion) / full,
        agreement=agreement(f_ev, tau_f, s_ev[:, -1], tau),
        agreement_calibration=agreement(f_cal, tau_f, s_cal[:, -1], tau),
        decided=[0.0] * (depth - 1) + [1.0], threshold=tau_f)))
  return out


def _calibrate(s_cal: np.ndarray, exits: Sequence[int], tau: float, target: float,
               costs: Callable, full: float, groups: np.ndarray, robust: bool, folds: int,
               prune_exits: bool, seed: int, memo: dict
               ) -> tuple[cascade.CascadeCalibration, dict[str, Any]]:
  """(calibration, its record fields): robust_cascade or the plain optimum for `costs`."""
  if robust:
    rc = cascade.robust_cascade(s_cal, exits, tau, target, costs=costs, full_cost=full,
                                groups=groups, folds=folds, seed=seed, prune_exits=prune_exits,
                                memo=memo)
    return rc.calibration, rc.to_dict()
  c = cascade.calibrate_cascade(s_cal, exits, tau, target, costs=costs, full_cost=full,
                                prune_exits=prune_exits)
  return c, c.to_dict()


def _never_slower(s_cal: np.ndarray, exits: Sequence[int], tau: float, c, cv: dict,
                  seconds: Callable, full_seconds: float, prune_exits: bool,
                  min_speedup: float = 1.0
                  ) -> tuple[cascade.CascadeCalibration, dict[str, Any] | None]:
  """(calibration, fallback): `c` when a cascade with early exits is predicted faster than both
  the full pass and one full segment (the last exit alone: no ATTN statistics nor fusions, so
  often a little faster than the full pass), else the one-segment run (every image to the last
  exit) and the best cascade found, with its predicted speed (docs/evaluation.md, "Early exits
  and thresholds"). `min_speedup` (>= 1) is the margin a cascade must be predicted to win by,
  for the cost model's own error."""
  depth = s_cal.shape[1]
  one_seconds = float(seconds((depth,))[-1])
  if len(c.exits) > 1 and c.mean_gflops * float(min_speedup) <= min(full_seconds, one_seconds):
    return c, None
  best = c if len(c.exits) > 1 else cascade.calibrate_cascade(
      s_cal, exits, tau, cv.get("internal_target", c.target), costs=seconds,
      full_cost=full_seconds, prune_exits=prune_exits, margin=cv.get("margin", 0.0),
      early_exit_required=True)
  one = cascade.calibrate_cascade(s_cal, (depth,), tau, c.target, costs=seconds,
                                  full_cost=full_seconds, prune_exits=False)
  return one, {"best_exits": "+".join(str(e) for e in best.exits),
               "best_predicted_speedup": full_seconds / best.mean_gflops
               if len(best.exits) > 1 else float("nan"),
               "one_segment_predicted_speedup": full_seconds / one.mean_gflops,
               "min_speedup": float(min_speedup)}


def _in_units(cv: Mapping[str, Any], seconds: bool) -> dict[str, Any]:
  """A calibration record without its thresholds (kept once, under "thresholds"), its mean
  and full costs named by their unit: GFLOPs, or the cost model's seconds per image."""
  out = {}
  for k, v in cv.items():
    if k in ("reject", "accept", "tau", "exits"):
      continue
    if seconds and k in ("mean_gflops", "full_gflops"):
      k = k.replace("gflops", "seconds")
    out[k] = _in_units(v, seconds) if isinstance(v, Mapping) else v
  return out


def cascade_columns(s_cal: np.ndarray, s_ev: np.ndarray, exits: Sequence[int], tau: float,
                    costs: Callable[[tuple[int, ...]], np.ndarray], full: float,
                    to_q100: Mapping[str, Callable[[np.ndarray], np.ndarray]],
                    targets: Sequence[float], groups: np.ndarray,
                    robust: bool = True, folds: int = 5, prune_exits: bool = True,
                    seed: int = 0, seconds: Callable[[tuple[int, ...]], np.ndarray] | None = None,
                    full_seconds: float = float("nan"), min_speedup: float = 1.0
                    ) -> tuple[list[Column], list[dict[str, Any]]]:
  """(columns, records): per agreement target, the cascade calibrated on `s_cal` (robust: its
  conservativeness chosen by `groups`-grouped cross-validation; `costs`: GFLOPs of leaving at
  each exit of an exit set, `full`: the full-depth program's) and run on `s_ev`; its quality is
  the 0–100 value at the exit left (`to_q100`: exit_k → its map, QualityMapping.columns).
  `seconds` (the measured cost model's per-image seconds, models/cascade_cost.py; with
  `full_seconds`, the full pass's) makes the calibration cost-aware: it minimises predicted
  seconds instead of GFLOPs, and where no cascade is predicted faster than the full pass it
  falls back to one segment (`_never_slower`, a cascade must be predicted `min_speedup` times
  faster; the record's "fallback" says what it found).
  A record holds the thresholds (also as exits_lib.CascadeThresholds under "_thresholds", for
  the engine; not part of the summary) and both splits' figures."""
  depth = s_cal.shape[1]
  memo: dict = {}
  objective, objective_full = (costs, full) if seconds is None else (seconds, full_seconds)
  out, records = [], []
  for target in [float(t) for t in targets]:
    c, cv = _calibrate(s_cal, exits, tau, target, objective, objective_full, groups, robust,
                       folds, prune_exits, seed, memo)
    fallback = None
    if seconds is not None:
      c, fallback = _never_slower(s_cal, exits, tau, c, cv, seconds, full_seconds, prune_exits,
                                  min_speedup)
      if fallback is not None:          # the cross-validated figures were the cascade's
        cv = {**c.to_dict(), "fell_back_from": cv}
    pred = cascade.simulate_cascade(s_ev, c.exits, c.reject, c.accept, tau)
    mean = pred.mean_cost(costs(c.exits))
    q = quality_mapping.at_exits(to_q100, pred.score, pred.exit)
    per_block = np.zeros(depth)
    per_block[np.asarray(c.exits) - 1] = pred.fraction_per_exit()
    thr = exits_lib.CascadeThresholds(**c.thresholds())
    speed = (float("nan") if seconds is None
             else full_seconds / pred.mean_cost(seconds(c.exits)))
    out.append((q.astype(np.float32), dict(
        method=cascade_name(target), kind="cascade", target=target,
        exits="+".join(str(e) for e in c.exits), mean_gflops=mean, saved=1 - mean / full,
        agreement=pred.agreement, agreement_calibration=c.agreement,
        decided=per_block.tolist(), threshold=tau,
        agreement_cv=cv.get("cv_agreement", float("nan")), predicted_speedup=speed,
        objective="gflops" if seconds is None else "seconds", fallback=fallback)))
    records.append({"target": target, "thresholds": thr.to_dict(),
                    "objective": "gflops" if seconds is None else "seconds",
                    "fallback": fallback,
                    "calibration": _in_units(cv, seconds is not None),
                    "evaluation": {"agreement": pred.agreement,
                                   "disagreements": pred.disagreements, "mean_gflops": mean,
                                   "saved": 1 - mean / full, "predicted_speedup": speed,
                                   "fraction_per_exit": pred.fraction_per_exit().tolist()},
                    "_thresholds": thr})
  return out, records


def fallback_text(target: float, fallback: Mapping[str, Any], device: str = "this device"
                  ) -> str:
  """The one line that says the cascade fell back to one segment, with the best it found."""
  best = fallback.get("best_predicted_speedup", float("nan"))
  found = (f"the best found, exits {fallback['best_exits']}, is predicted at {best:.2f}x"
           if math.isfinite(best) else "no early exit decides here")
  margin = float(fallback.get("min_speedup", 1.0))
  faster = "faster" if margin <= 1.0 else f"{margin:g}x faster"
  return (f"no cascade is predicted {faster} than one full segment and the full pass at "
          f"{100 * target:g} % agreement on {device} ({found} the full pass's images/s, one "
          f"segment at {fallback['one_segment_predicted_speedup']:.2f}x): it runs as one full "
          "segment")


def headline(rows: Sequence[Mapping[str, Any]], target: float, timing: Mapping[str, Any],
             device: str = "this device") -> dict[str, Any]:
  """The cascade at the headline agreement target (0.99) in numbers and one sentence: GFLOPs
  saved, agreement, pAUC, and images/s against the full pass (predicted by the cost model and
  measured), or the line saying it fell back to one segment."""
  row = next((r for r in rows if r["kind"] == "cascade" and math.isclose(r["target"], target)),
             None)
  full = next(r for r in rows if r["kind"] == "exit" and r["exits"] == str(len(r["decided"])))
  if row is None:
    return {"text": f"no cascade at agreement target {target:g}"}
  cv = row.get("agreement_cv", float("nan"))
  cv_text = f", cross-validated {100 * cv:.2f} %" if math.isfinite(cv) else ""
  speed = (row["images_per_second"] / full["images_per_second"]
           if full["images_per_second"] and math.isfinite(row["images_per_second"]) else None)
  predicted = row.get("predicted_speedup", float("nan"))
  fallback = row.get("fallback")
  text = (f"at {100 * target:g} % agreement the cascade (exits {row['exits']}) needs "
          f"{row['mean_gflops']:.3g} of {full['mean_gflops']:.3g} GFLOPs per image: "
          f"{100 * row['saved']:.1f} % compute saved, held-out agreement "
          f"{100 * row['agreement']:.2f} % (calibration {100 * row['agreement_calibration']:.2f} "
          f"%{cv_text}), pAUC {1e3 * row['pauc']:.2f} vs {1e3 * full['pauc']:.2f} x1e-3 "
          f"at full depth")
  if fallback:
    text = fallback_text(target, fallback, device) + "; " + text
  if predicted is not None and math.isfinite(predicted):
    text += f", predicted {predicted:.2f}x the full pass's images/s"
  if speed is not None:
    text += f", {speed:.2f}x measured on {timing.get('images')} images"
  return {"target": target, "saved": row["saved"], "mean_gflops": row["mean_gflops"],
          "full_gflops": full["mean_gflops"], "agreement": row["agreement"],
          "agreement_calibration": row["agreement_calibration"], "agreement_cv": cv,
          "pauc": row["pauc"], "full_pauc": full["pauc"], "exits": row["exits"],
          "speedup": speed, "predicted_speedup": predicted, "fallback": fallback,
          "text": text}
