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
The files (edc_groups.csv, pauc_groups.csv, the summary sections, plots) are
exfiqa_jax/report/groups.py's.
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
from exfiqa_jax.evaluation.results import QualityColumn

CSV_GROUPING = "group"     # the grouping name of a header-less CSV
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
    return gap(self.fnmr)

  @property
  def gap_pauc(self) -> np.ndarray:
    return gap(self.pauc)


def gap(values: np.ndarray) -> np.ndarray:
  """max − min over the groups (axis 0) of the finite values; NaN with fewer than two."""
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
