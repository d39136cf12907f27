"""Per-group EDC (fairness): EDC and pAUC inside each demographic group, and the gap between
groups at every discard fraction (docs/evaluation.md, "Per-group EDC").

Labels come from the data set (Adience's age and gender, from its fold files) or from a CSV
`image,group` (`--config.eval.groups=<csv>`; more columns are more groupings, named by the
header). The rule: **a pair belongs to group g when both of its images are labelled g**;
pairs across groups or with an unlabelled image are left out of every per-group curve. For IJB-C
a template is labelled g when all of its images are, and a template pair belongs to g when both
templates are.

A group's EDC is the EDC of its pairs alone, computed with `exfiqa_jax.metrics.edc` exactly as the
whole benchmark's (same mode, FMRs, discard grid, pair quality, input order), so in mode
"fiqa" the threshold is re-chosen on the group's own impostors at every level: each group is
held at the target FMR and the curve shows its FNMR there. A group without genuine or without
impostor pairs has no EDC (NaN). The gap at a discard level is max − min FNMR over the groups
that have an EDC (NaN with fewer than two); the pAUC gap is max − min pAUC. No bootstrap here.
"""
from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from absl import logging

from exfiqa_jax import files
from exfiqa_jax.metrics import edc
from exfiqa_jax.evaluation import stages
from exfiqa_jax.evaluation.results import BenchmarkEval, QualityColumn

GAP = "gap"                # the group name of the gap rows in edc_groups.csv / pauc_groups.csv
CSV_GROUPING = "group"     # the grouping name of a header-less CSV
EDC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "grouping", "group", "fmr", "discard",
               "fnmr", "threshold", "n_genuine", "n_impostor")
PAUC_COLUMNS = ("benchmark", "fr_model", "quality", "mode", "grouping", "group", "fmr", "limit",
                "pauc", "n_pairs", "n_genuine", "n_impostor")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


# ------------------------------------------------------------------------------------------
# Labels
# ------------------------------------------------------------------------------------------
def read_groups_csv(path: str) -> dict[str, dict[str, str]]:
  """A CSV `image,group[,group2…]` → {grouping: {image name: label}}.

  A first row whose first cell is `image` is the header and names the groupings; without one
  there is a single grouping "group". Empty labels mean unlabelled.
  """
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--config.eval.groups={path}: no such file (a CSV with rows "
                            "'image,group')")
  with open(path, newline="", encoding="utf-8") as f:
    rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
  if not rows:
    raise ValueError(f"--config.eval.groups={path} is empty; expected rows 'image,group'")
  header = [c.strip() for c in rows[0]]
  if header[0].lower() == "image":
    names, rows = header[1:], rows[1:]
  else:
    names = [CSV_GROUPING] + [f"{CSV_GROUPING}_{k}" for k in range(2, len(header))]
  if not names or any(not n for n in names) or len(set(names)) != len(names):
    raise ValueError(f"--config.eval.groups={path}: the header must be 'image,<grouping>[,...]' "
                     f"with distinct names, got {header}")
  out: dict[str, dict[str, str]] = {n: {} for n in names}
  for number, row in enumerate(rows, 2 if header[0].lower() == "image" else 1):
    if len(row) != len(names) + 1:
      raise ValueError(f"{path}:{number}: expected {len(names) + 1} columns (image + "
                       f"{', '.join(names)}), got {len(row)}: {row!r}")
    image = row[0].strip()
    for name, label in zip(names, row[1:]):
      previous = out[name].setdefault(image, label.strip())
      if previous != label.strip():
        raise ValueError(f"{path}:{number}: image {image!r} has two {name} labels "
                         f"({previous!r}, {label.strip()!r})")
  return out


def _stem(name: str) -> str:
  root, ext = os.path.splitext(name)
  return root if ext.lower() in _IMAGE_EXT else name


def match_labels(table: Mapping[str, str], names: Sequence[str]) -> np.ndarray:
  """Labels [I] for the benchmark's image names: exact name, else the names without an image
  extension on either side (a CSV of `00012.jpg` labels the `.bin` record `00012`)."""
  by_stem: dict[str, str] = {}
  for key, label in table.items():
    by_stem.setdefault(_stem(key), label)
  return np.asarray([table.get(n, by_stem.get(_stem(n), "")) for n in map(str, names)],
                    dtype=str)


def image_labels(bench, names: Sequence[str], groups_csv: str = "") -> dict[str, np.ndarray]:
  """Every grouping of a benchmark: the data set's own (bench.groups) and the CSV's; a grouping
  with no labelled image of this benchmark is left out (logged)."""
  out = {k: np.asarray(v, dtype=str) for k, v in bench.groups.items()}
  if groups_csv:
    for grouping, table in read_groups_csv(groups_csv).items():
      labels = match_labels(table, names)
      if not (labels != "").any():
        logging.warning("per-group EDC: %s labels no image of %s (grouping %s)", groups_csv,
                        bench.name, grouping)
        continue
      if grouping in out:
        logging.warning("per-group EDC: %s's grouping %r replaces %s's own", groups_csv,
                        grouping, bench.name)
      out[grouping] = labels
  return {k: v for k, v in out.items() if (v != "").any()}


def pair_groups(bench, labels: np.ndarray, cmp: Mapping[str, np.ndarray] | stages.Stage
                ) -> tuple[np.ndarray, list[str]]:
  """(group of every pair [P] as an index into the names, -1 = none; the group names, sorted).

  Image pairs: both images carry the label. Template pairs (IJB-C): both templates do, a
  template carrying a label when every one of its images carries it.
  """
  labels = np.asarray(labels, dtype=str)
  if bench.pair_kind == "image":
    a, b = labels[bench.pairs[:, 0]], labels[bench.pairs[:, 1]]
  else:
    t_index = np.asarray(cmp["template_index"])
    n_templates = int(np.asarray(cmp["num_templates"]))
    values, inverse = np.unique(labels, return_inverse=True)
    first = np.full(n_templates, -1, np.int64)
    first[t_index] = inverse                 # the label of one (any) image of each template
    mixed = np.zeros(n_templates, bool)
    np.logical_or.at(mixed, t_index, inverse != first[t_index])
    template_label = np.where(mixed, "", values[first])
    rows = np.asarray(cmp["pair_rows"])
    a, b = template_label[rows[:, 0]], template_label[rows[:, 1]]
  member = (a == b) & (a != "")
  names, index = np.unique(a[member], return_inverse=True)
  out = np.full(len(a), -1, np.int64)
  out[member] = index
  return out, [str(n) for n in names]


# ------------------------------------------------------------------------------------------
# The stage
# ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GroupEval:
  """Per-group EDC of one benchmark × FR model × mode × grouping.

  fnmr / threshold [G, S, F, R], n_genuine / n_impostor [G, S, R] (kept at each level),
  pauc [G, S, F]; n_pairs / n_genuine_pairs / n_impostor_pairs [G]; gap_fnmr [S, F, R] and
  gap_pauc [S, F] (max − min over the groups with an EDC).
  """
  benchmark: str
  fr_model: str
  mode: str
  grouping: str
  groups: list[str]
  columns: list[QualityColumn]
  fmrs: np.ndarray
  discard: np.ndarray
  limit: float
  fnmr: np.ndarray
  threshold: np.ndarray
  n_genuine: np.ndarray
  n_impostor: np.ndarray
  pauc: np.ndarray
  n_pairs: np.ndarray
  n_genuine_pairs: np.ndarray
  n_impostor_pairs: np.ndarray

  @property
  def names(self) -> list[str]:
    return [c.name for c in self.columns]

  @property
  def gap_fnmr(self) -> np.ndarray:
    return _gap(self.fnmr)

  @property
  def gap_pauc(self) -> np.ndarray:
    return _gap(self.pauc)


def _gap(values: np.ndarray) -> np.ndarray:
  finite = np.isfinite(values)
  count = finite.sum(0)
  hi = np.where(finite, values, -np.inf).max(0)
  lo = np.where(finite, values, np.inf).min(0)
  with np.errstate(invalid="ignore"):
    return np.where(count >= 2, hi - lo, np.nan)


def group_curves(scores: np.ndarray, is_genuine: np.ndarray, pair_quality: np.ndarray,
                 member: np.ndarray, num_groups: int, fmrs: Sequence[float], mode: str,
                 limit: float, discard=edc.FIQA_DISCARD) -> dict[str, np.ndarray]:
  """The EDC of every group's pairs (member [P] = group index, -1 = none); arrays of GroupEval."""
  disc = np.asarray(discard)
  S, F, R = pair_quality.shape[0], len(fmrs), disc.size
  out = {"fnmr": np.full((num_groups, S, F, R), np.nan),
         "threshold": np.full((num_groups, S, F, R), np.nan),
         "n_genuine": np.zeros((num_groups, S, R), np.int64),
         "n_impostor": np.zeros((num_groups, S, R), np.int64),
         "pauc": np.full((num_groups, S, F), np.nan),
         "n_pairs": np.zeros(num_groups, np.int64),
         "n_genuine_pairs": np.zeros(num_groups, np.int64),
         "n_impostor_pairs": np.zeros(num_groups, np.int64)}
  for g in range(num_groups):
    rows = np.flatnonzero(member == g)
    gen = np.asarray(is_genuine, bool)[rows]
    out["n_pairs"][g], out["n_genuine_pairs"][g] = len(rows), int(gen.sum())
    out["n_impostor_pairs"][g] = len(rows) - int(gen.sum())
    if gen.all() or not gen.any():
      continue                            # an EDC needs genuine and impostor pairs
    curves = edc.edc_curves(np.asarray(scores)[rows], gen, pair_quality[:, rows], fmrs, disc,
                            mode, pauc_limit=limit)
    out["fnmr"][g], out["threshold"][g] = curves.fnmr, curves.threshold
    out["n_genuine"][g], out["n_impostor"][g] = curves.n_genuine, curves.n_impostor
    out["pauc"][g] = curves.pauc
  return out


def group_stage(cache: stages.StageCache, bench, fr_name: str, mode: str, cmp: stages.Stage,
                cols: Sequence[QualityColumn], image_q: np.ndarray, deps_q: Mapping[str, Any],
                grouping: str, labels: np.ndarray,
                to_pairs: Callable[[np.ndarray], np.ndarray], config) -> GroupEval | None:
  """Stage groups/<bench>/<fr>/<mode>/<grouping>: per-group EDC of every quality column (None
  when no pair lies inside a group)."""
  fmrs = tuple(float(f) for f in config.eval.fmrs)
  limit = float(config.eval.pauc_limit[mode])
  member, names = pair_groups(bench, labels, cmp)
  if not names:
    logging.warning("per-group EDC: no pair of %s has both images in one %s group", bench.name,
                    grouping)
    return None
  deps = {"compare": cmp, "quality": deps_q, "columns": [dataclasses.asdict(c) for c in cols],
          "fmrs": fmrs, "mode": mode, "limit": limit, "grouping": grouping,
          "labels": np.asarray(labels, dtype=str), "rule": "both images (templates) in the group"}

  def compute():
    group = max(1, min(len(cols), int(config.eval.get("set_group", 8))))
    parts = []
    for lo in range(0, len(cols), group):        # bounded memory at IJB-C scale, as edc_stage
      parts.append(group_curves(cmp["scores"], cmp["is_genuine"], to_pairs(image_q[lo:lo + group]),
                                member, len(names), fmrs, mode, limit))
    out = {k: np.concatenate([p[k] for p in parts], axis=1) for k in
           ("fnmr", "threshold", "n_genuine", "n_impostor", "pauc")}
    out.update({k: parts[0][k] for k in ("n_pairs", "n_genuine_pairs", "n_impostor_pairs")})
    out["groups"] = np.asarray(names, dtype=str)
    return out

  st = cache.run(f"groups/{bench.name}/{files.slug(fr_name)}/{mode}/{files.slug(grouping)}",
                 deps, compute)
  a = st.arrays
  return GroupEval(bench.name, fr_name, mode, grouping, [str(g) for g in a["groups"]], list(cols),
                   np.asarray(fmrs), np.asarray(edc.FIQA_DISCARD), limit, a["fnmr"],
                   a["threshold"], a["n_genuine"], a["n_impostor"], a["pauc"], a["n_pairs"],
                   a["n_genuine_pairs"], a["n_impostor_pairs"])


# ------------------------------------------------------------------------------------------
# Reports: edc_groups.csv, pauc_groups.csv, summary.md / summary.json, one plot per grouping
# ------------------------------------------------------------------------------------------
def edc_rows(ge: GroupEval) -> list[dict[str, Any]]:
  """edc_groups.csv rows: one per group × quality × FMR × discard, then the gap rows
  (group "gap": fnmr = max − min over the groups; threshold and counts empty)."""
  base = dict(benchmark=ge.benchmark, fr_model=ge.fr_model, mode=ge.mode, grouping=ge.grouping)
  rows, gap = [], ge.gap_fnmr
  for s, name in enumerate(ge.names):
    for f, fmr in enumerate(ge.fmrs):
      for r, disc in enumerate(ge.discard):
        for g, group in enumerate(ge.groups):
          rows.append(dict(base, quality=name, group=group, fmr=float(fmr), discard=float(disc),
                           fnmr=ge.fnmr[g, s, f, r], threshold=ge.threshold[g, s, f, r],
                           n_genuine=ge.n_genuine[g, s, r], n_impostor=ge.n_impostor[g, s, r]))
        rows.append(dict(base, quality=name, group=GAP, fmr=float(fmr), discard=float(disc),
                         fnmr=gap[s, f, r], threshold="", n_genuine="", n_impostor=""))
  return rows


def pauc_rows(ge: GroupEval) -> list[dict[str, Any]]:
  """pauc_groups.csv rows: one per group × quality × FMR, then the gap row (max − min)."""
  base = dict(benchmark=ge.benchmark, fr_model=ge.fr_model, mode=ge.mode, grouping=ge.grouping,
              limit=ge.limit)
  rows, gap = [], ge.gap_pauc
  for s, name in enumerate(ge.names):
    for f, fmr in enumerate(ge.fmrs):
      for g, group in enumerate(ge.groups):
        rows.append(dict(base, quality=name, group=group, fmr=float(fmr), pauc=ge.pauc[g, s, f],
                         n_pairs=ge.n_pairs[g], n_genuine=ge.n_genuine_pairs[g],
                         n_impostor=ge.n_impostor_pairs[g]))
      rows.append(dict(base, quality=name, group=GAP, fmr=float(fmr), pauc=gap[s, f],
                       n_pairs="", n_genuine="", n_impostor=""))
  return rows


def _result_for(ge: GroupEval, results: Sequence[BenchmarkEval]) -> BenchmarkEval | None:
  return next((r for r in results if r.benchmark == ge.benchmark and r.fr_model == ge.fr_model
               and ge.mode in r.modes), None)


def table_fmr_index(fmrs: np.ndarray) -> int:
  """The FMR of the papers' tables (1e-3) when evaluated, else the middle one."""
  close = np.flatnonzero(np.isclose(np.asarray(fmrs, float), 1e-3))
  return int(close[0]) if close.size else len(fmrs) // 2


def best_and_last_exit(ge: GroupEval, results: Sequence[BenchmarkEval]) -> list[int]:
  """Column rows of the best exit (lowest whole-benchmark pAUC at the table FMR) and the last
  exit of the same model; [] when there are no exit columns."""
  exits = [s for s, c in enumerate(ge.columns) if c.kind == "exit"]
  if not exits:
    return []
  f = table_fmr_index(ge.fmrs)
  result = _result_for(ge, results)
  overall = (result.modes[ge.mode].pauc[:, f] if result is not None
             else np.nanmean(ge.pauc[:, :, f], axis=0))
  best = min(exits, key=lambda s: (np.nan_to_num(overall[s], nan=np.inf), s))
  model = ge.columns[best].model
  last = max((s for s in exits if ge.columns[s].model == model),
             key=lambda s: ge.columns[s].exit or 0)
  return [best] if last == best else [best, last]


def markdown(evals: Sequence[GroupEval], results: Sequence[BenchmarkEval]) -> list[str]:
  """summary.md lines: per benchmark × FR × mode × grouping, pAUC ×1e3 per group of the best
  and last exit (and random) at every FMR, and the gap row."""
  if not evals:
    return []
  lines = ["## Per-group EDC", "",
           "A pair counts for a group when both images (IJB-C: both templates) are in it; pairs "
           "across groups are left out. pAUC-EDC ×1e3 of the group's own EDC; gap = max − min "
           "over the groups (docs/evaluation.md, Per-group EDC).", ""]
  for ge in evals:
    show = best_and_last_exit(ge, results) + [s for s, c in enumerate(ge.columns)
                                              if c.kind == "random"]
    if not show:
      show = list(range(len(ge.columns)))
    lines.append(f"### {ge.benchmark} by {ge.grouping} (FR `{ge.fr_model}`, mode `{ge.mode}`, "
                 f"limit {ge.limit:g})")
    lines.append("")
    header = ["group", "pairs (genuine / impostor)"] + [
        f"{ge.names[s]} @FMR {float(fmr):.0e}" for fmr in ge.fmrs for s in show]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g, group in enumerate(ge.groups):
      cells = [f"{1e3 * ge.pauc[g, s, f]:.2f}" if np.isfinite(ge.pauc[g, s, f]) else "n/a"
               for f in range(len(ge.fmrs)) for s in show]
      lines.append(f"| {group} | {ge.n_genuine_pairs[g]} / {ge.n_impostor_pairs[g]} | "
                   + " | ".join(cells) + " |")
    gap = ge.gap_pauc
    cells = [f"{1e3 * gap[s, f]:.2f}" if np.isfinite(gap[s, f]) else "n/a"
             for f in range(len(ge.fmrs)) for s in show]
    lines += ["| **gap** (max − min) | | " + " | ".join(cells) + " |", ""]
  return lines


def summary(evals: Sequence[GroupEval]) -> list[dict[str, Any]]:
  """summary.json entries: counts per group and every pAUC per group, with the gap."""
  out = []
  for ge in evals:
    gap = ge.gap_pauc
    out.append({
        "benchmark": ge.benchmark, "fr_model": ge.fr_model, "mode": ge.mode,
        "grouping": ge.grouping, "limit": ge.limit,
        "groups": {g: {"n_pairs": int(ge.n_pairs[k]), "n_genuine": int(ge.n_genuine_pairs[k]),
                       "n_impostor": int(ge.n_impostor_pairs[k])}
                   for k, g in enumerate(ge.groups)},
        "pauc": {f"{float(fmr):g}": {name: {**{g: _json(ge.pauc[k, s, f])
                                               for k, g in enumerate(ge.groups)},
                                            GAP: _json(gap[s, f])}
                                     for s, name in enumerate(ge.names)}
                 for f, fmr in enumerate(ge.fmrs)}})
  return out


def _json(v) -> float | None:
  return float(v) if np.isfinite(v) else None


def plot(path: str, ge: GroupEval, results: Sequence[BenchmarkEval]) -> str:
  """Per-group EDC curves of the best exit (solid) and the last exit (dashed), one panel per
  FMR, one colour per group."""
  from exfiqa_jax import report
  show = best_and_last_exit(ge, results) or [0]
  fig = report._figure(4.2 * len(ge.fmrs), 3.6)
  styles = ["-", "--"]
  for f, fmr in enumerate(ge.fmrs):
    ax = fig.add_subplot(1, len(ge.fmrs), f + 1)
    for g, group in enumerate(ge.groups):
      for k, s in enumerate(show):
        if np.isfinite(ge.fnmr[g, s, f]).any():
          ax.plot(ge.discard, ge.fnmr[g, s, f], ls=styles[k % 2], color=f"C{g % 10}", lw=1.4,
                  label=f"{group} · {ge.names[s]}")
    ax.axvline(ge.limit, color="0.6", lw=0.6, ls=":")
    ax.set_title(f"{ge.benchmark} by {ge.grouping}  FMR {float(fmr):.0e}  ({ge.mode})",
                 fontsize=9)
    ax.set_xlabel("fraction of the group's pairs discarded" if ge.mode == "fiqa"
                  else "fraction of the group's genuine comparisons discarded", fontsize=8)
    ax.set_ylabel("FNMR", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if f == len(ge.fmrs) - 1:
      ax.legend(fontsize=6, loc="upper right")
  return report._save(fig, path)


def write(output: str, evals: Sequence[GroupEval], results: Sequence[BenchmarkEval],
          plots: bool = True) -> dict[str, Any]:
  """edc_groups.csv, pauc_groups.csv and plots/edc_groups_<bench>_<fr>_<mode>_<grouping>.png."""
  if not evals:
    return {}
  paths: dict[str, Any] = {"edc_groups": os.path.join(output, "edc_groups.csv"),
                           "pauc_groups": os.path.join(output, "pauc_groups.csv")}
  from exfiqa_jax import report
  files.write_text(paths["edc_groups"], report.csv_text(
      [r for ge in evals for r in edc_rows(ge)], EDC_COLUMNS))
  files.write_text(paths["pauc_groups"], report.csv_text(
      [r for ge in evals for r in pauc_rows(ge)], PAUC_COLUMNS))
  if plots:
    paths["group_plots"] = [plot(os.path.join(output, "plots", "edc_groups_" + "_".join(
        files.slug(x) for x in (ge.benchmark, ge.fr_model, ge.mode, ge.grouping)) + ".png"),
        ge, results) for ge in evals]
  return paths
