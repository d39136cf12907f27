"""Adience age and gender labels from the release's fold files, for per-group EDC
(docs/data.md, Adience; docs/evaluation.md, "Per-group EDC").

The fold files (`fold_0_data.txt` … `fold_4_data.txt`, tab-separated with a header
`user_id original_image face_id age gender x y dx dy tilt_ang fiducial_yaw_angle
fiducial_score`) label every face *image*; CR-FIQA's extract_adience.py names its crops
`p_<face_id>_img_<k>.jpg` and so keeps only the face id. A label is therefore given per face id:
the most frequent label over that face id's rows (a tie or no usable row: unlabelled, "").

Age is one of Adience's eight groups "(0, 2)", "(4, 6)", "(8, 12)", "(15, 20)", "(25, 32)",
"(38, 43)", "(48, 53)", "(60, 100)". A value written otherwise in the release takes the group
whose range contains it ("(27, 32)" → "(25, 32)") and is unlabelled when none does: most single
ages in the release fall between the groups ("3", "13", "22", "35", "45", "55", "58"), as do
"(8, 23)" and "(38, 48)"; "None" is unlabelled. Gender "m" → "male", "f" → "female"; "u" and
empty are unlabelled.
"""
from __future__ import annotations

import collections
import glob
import os
import re

AGE_GROUPS = ((0, 2), (4, 6), (8, 12), (15, 20), (25, 32), (38, 43), (48, 53), (60, 100))
GENDERS = {"m": "male", "f": "female"}
FOLD_PATTERN = "fold_[0-9]*_data.txt"      # not fold_frontal_*: the same faces again
_NUMBERS = re.compile(r"\d+")


class FoldFileError(ValueError):
  """A fold file without the columns face_id, age and gender."""


def fold_files(folder: str) -> list[str]:
  """The five fold files of an Adience release folder (sorted); [] when there are none."""
  return sorted(glob.glob(os.path.join(folder, FOLD_PATTERN)))


def age_group(value: str) -> str:
  """A fold file's age text → one of the eight group names, or "" (see the module docstring)."""
  numbers = [int(n) for n in _NUMBERS.findall(value or "")]
  if not numbers or len(numbers) > 2:
    return ""
  lo, hi = min(numbers), max(numbers)
  for a, b in AGE_GROUPS:
    if a <= lo and hi <= b:
      return f"({a}, {b})"
  return ""


def read_folds(paths: list[str]) -> dict[str, dict[str, str]]:
  """{"age": {face_id: group}, "gender": {face_id: "female" | "male"}} over every fold file."""
  votes: dict[str, dict[str, collections.Counter]] = {"age": {}, "gender": {}}
  for path in paths:
    with open(path, encoding="utf-8", errors="replace") as f:
      header = f.readline().rstrip("\r\n").split("\t")
      try:
        col = {k: header.index(k) for k in ("face_id", "age", "gender")}
      except ValueError:
        raise FoldFileError(f"{path}: expected a tab-separated Adience fold file whose header "
                            f"names face_id, age and gender; got {header[:6]}") from None
      for line in f:
        cells = line.rstrip("\r\n").split("\t")
        if len(cells) <= max(col.values()):
          continue
        face = cells[col["face_id"]].strip()
        labels = {"age": age_group(cells[col["age"]]),
                  "gender": GENDERS.get(cells[col["gender"]].strip().lower(), "")}
        for key, label in labels.items():
          if face and label:
            votes[key].setdefault(face, collections.Counter())[label] += 1
  out: dict[str, dict[str, str]] = {}
  for key, per_face in votes.items():
    out[key] = {}
    for face, counter in per_face.items():
      ranked = counter.most_common(2)
      if len(ranked) == 1 or ranked[0][1] > ranked[1][1]:
        out[key][face] = ranked[0][0]
  return out
