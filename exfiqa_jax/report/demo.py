"""The demo's additions to the evaluation report (exfiqa_jax/report/evaluation.py): the notes
under summary.md's title (with the time line: each part as long as the run that computed it
took, docs/demo.md "Outputs") and the Spearman(quality, -severity) table under its tables."""
from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np

from exfiqa_jax import parallel
from exfiqa_jax.data import synthetic
from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.report import tables


PARTS = (("train", "training"), ("test_data", "test data"), ("evaluate", "evaluation"),
         ("early_exit", "early exits"))       # the demo's timed parts, in its order


def merge_timings(stored: Mapping[str, Any] | None, seconds: Mapping[str, float],
                  fresh: Collection[str]) -> dict[str, Any]:
  """The time record of a demo output folder: per part (PARTS) the seconds of the run that
  computed it — this run's `seconds` for the parts in `fresh`, else `stored`'s (None: never
  recorded) — and their total (the stored total with the recomputed parts swapped in); with
  "rerun" = this run's own seconds when it reused anything."""
  old = dict((stored or {}).get("seconds") or {})
  kept = {p: (seconds[p] if p in fresh else old.get(p)) for p, _ in PARTS}
  if all(p in fresh for p, _ in PARTS):
    return {"seconds": {**kept, "total": seconds["total"]}}
  swapped = [p for p, _ in PARTS if p in fresh]
  total = old.get("total")
  if total is not None and all(old.get(p) is not None for p in swapped):
    total = round(total + sum(seconds[p] - old[p] for p in swapped), 1)
  else:
    total = None
  return {"seconds": {**kept, "total": total}, "rerun": dict(seconds)}


def time_line(timing: Mapping[str, Any]) -> str:
  """"Time: …" of summary.md: the computing runs' seconds ("—" where not recorded), and the
  cached rerun's own seconds after them when this run reused anything."""
  s = timing["seconds"]

  def sec(v: float | None) -> str:
    return "—" if v is None else f"{v:.0f} s"

  if all(s.get(p) is None for p in ("total", *dict(PARTS))):
    return (f"Time: cached rerun {timing['rerun']['total']:.0f} s; the runs that computed the "
            "parts recorded no times.")
  line = f"Time: {sec(s.get('total'))} ({', '.join(f'{n} {sec(s.get(p))}' for p, n in PARTS)})"
  if "rerun" in timing:
    line += (f", each part as long as the run that computed it took (cached rerun: "
             f"{timing['rerun']['total']:.0f} s)")
  return line + "."


def notes(bench: Benchmark, check: Mapping[str, Any], timing: Mapping[str, Any],
          early_exit: str, machine: Mapping[str, Any] | None = None) -> list[str]:
  """The test data, the targets and whether they were met, the machine (parallel.device_info:
  trained numbers are this CPU model's), the time line (time_line of merge_timings' record),
  the early-exit headline."""
  verdict = "met" if check["met"] else "NOT met"
  ran_on = ([f"Machine: {parallel.device_name(machine)}, JAX {machine.get('jax')}. The numbers "
             "repeat on this machine; another CPU model trains to slightly different ones (XLA's "
             "kernels differ; README)."] if machine else [])
  return [
      f"Synthetic faces: {bench.num_images} test images of "
      f"{len(np.unique(bench.extra['identity']))} "
      f"identities unseen in training, {len(bench.is_genuine)} pairs "
      f"({int(bench.is_genuine.sum())} genuine); FR model = the quality model's own feature head. "
      f"`oracle` = minus the true degradation severity; `random` = seeded random quality.",
      f"Targets ({verdict}): best exit `{check['best_exit']}` pAUC at FMR {check['fmr']:g} = "
      f"{check['ratio_to_random']:.3f} x random (target <= {check['max_ratio_to_random']}); "
      f"Spearman(quality, -severity) = {check['spearman']:.3f} (target >= "
      f"{check['min_spearman']}); oracle = {check['oracle_ratio_to_random']} x random.",
      *ran_on,
      time_line(timing),
      f"Early exits (early_exit/early_exit.md; thresholds calibrated on the identity-disjoint "
      f"val split): {early_exit}.",
  ]


def severity_table(rho: Mapping[str, float], rho_kind: Mapping[str, Mapping[str, float]]
                   ) -> list[str]:
  """summary.md's "Spearman(quality, -severity)" section: overall and per degradation kind."""
  return ["", "## Spearman(quality, -severity)", ""] + tables.markdown_table(
      ["quality", "all"] + list(synthetic.DEGRADATIONS),
      ([name, f"{rho[name]:.3f}"] + [f"{rho_kind[name].get(k, float('nan')):.3f}"
                                     for k in synthetic.DEGRADATIONS] for name in rho))
