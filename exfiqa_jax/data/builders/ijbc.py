"""IJB-C 1:1 template verification as the FIQA papers run it (docs/evaluation.md).

Every line of `meta/ijbc_name_5pts_score.txt` is one record: `loose_crop/<name>` aligned to
the ArcFace 112×112 template by the 5-point similarity transform (`align.align_face`), with
its template id, media id and faceness from `meta/ijbc_face_tid_mid.txt` (checked to name
the same image on the same line). The 15.7M template pairs of
`meta/ijbc_template_pair_label.txt` are stored beside the records as `.npy` (template ids,
not record positions). `subset=N` keeps the first N templates (in tid_mid order) and the
pairs between them, for quick runs.
"""
from __future__ import annotations

import functools
import logging
import os
import warnings

import numpy as np
import tensorflow_datasets as tfds

from exfiqa_jax.data import align
from exfiqa_jax.data import preprocess
from exfiqa_jax.data import protocols
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/            (the IJB_release/IJBC folder, or a folder containing it)
    loose_crop/<img_name>                     e.g. loose_crop/1.jpg
    meta/ijbc_name_5pts_score.txt             img_name x1 y1 ... x5 y5 faceness   (12 columns)
    meta/ijbc_face_tid_mid.txt                img_name template_id media_id       (3 columns,
                                              same images in the same order as the 5pts file)
    meta/ijbc_template_pair_label.txt         template_id_1 template_id_2 label   (3 columns)"""

FILES = {"five_points": "ijbc_name_5pts_score.txt", "tid_mid": "ijbc_face_tid_mid.txt",
         "template_pairs": "ijbc_template_pair_label.txt"}


def read_five_points(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """→ (names [N], landmarks [N, 5, 2] float32, faceness [N] float32); bad lines name themselves."""
  names, values = [], []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      if len(tokens) != 12:
        raise base.DataError(f"{path}:{number}: expected 12 columns 'img_name x1 y1 ... x5 y5 "
                             f"faceness', got {len(tokens)}: {line.strip()[:120]!r}")
      try:
        values.append([float(t) for t in tokens[1:]])
      except ValueError:
        raise base.DataError(f"{path}:{number}: non-numeric landmark or faceness in "
                             f"{line.strip()[:120]!r}") from None
      names.append(tokens[0])
  array = np.asarray(values, dtype=np.float64).reshape(-1, 11)
  return names, array[:, :10].reshape(-1, 5, 2).astype(np.float32), array[:, 10].astype(np.float32)


def read_tid_mid(path: str) -> tuple[list[str], np.ndarray, np.ndarray]:
  """→ (names [N], template_id [N] int64, media_id [N] int64)."""
  names, ids = [], []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      tokens = line.split()
      if not tokens:
        continue
      try:
        if len(tokens) != 3:
          raise ValueError(f"{len(tokens)} columns")
        ids.append((int(tokens[1]), int(tokens[2])))
      except ValueError as e:
        raise base.DataError(f"{path}:{number}: expected 'img_name template_id media_id' "
                             f"(integers), got {line.strip()[:120]!r} ({e})") from None
      names.append(tokens[0])
  ids = np.asarray(ids, dtype=np.int64).reshape(-1, 2)
  return names, ids[:, 0], ids[:, 1]


def count_repeated_pairs(a: np.ndarray, b: np.ndarray) -> int:
  """How many rows of the pair list (a[i], b[i]) repeat an earlier row, in either order."""
  if len(a) == 0:
    return 0
  pairs = np.sort(np.stack([np.asarray(a, np.int64), np.asarray(b, np.int64)], 1), axis=1)
  return int(len(pairs) - len(np.unique(pairs, axis=0)))


def read_int_table(path: str, columns: int) -> np.ndarray:
  """Whitespace-separated integer table [R, columns], fast (15.7M rows in seconds)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      values = np.fromstring(data, dtype=np.int64, sep=" ")  # text mode: not deprecated
    if values.size % columns == 0 and values.size // columns == _count_lines(data):
      return values.reshape(-1, columns)
  except (ValueError, DeprecationWarning):
    pass
  rows = []   # slow path: find the offending line (or accept blank lines)
  for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
    tokens = line.split()
    if not tokens:
      continue
    try:
      if len(tokens) != columns:
        raise ValueError(f"{len(tokens)} columns")
      rows.append([int(t) for t in tokens])
    except ValueError as e:
      raise base.DataError(f"{path}:{number}: expected {columns} integer columns, got "
                           f"{line.strip()[:120]!r} ({e})") from None
  return np.asarray(rows, dtype=np.int64).reshape(-1, columns)


def _count_lines(data: bytes) -> int:
  return data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)


def aligned_crop(path: str, landmarks: np.ndarray, image_format: str) -> bytes:
  """Reads a loose crop (RGB), aligns it to 112×112 and encodes it: "jpeg" = the file CR-FIQA's
  extract_IJB.py writes (cv2.imwrite of the channel-swapped crop, read back as "bgr"), "png" =
  lossless (docs/data.md, "Protocols: published and lossless")."""
  if not os.path.exists(path):
    raise preprocess.ImageError(f"loose crop {path} is missing")
  # 16-bit scaled; broken files and decompression bombs are an ImageError (skip_corrupt skips)
  rgb = np.asarray(preprocess.open_rgb(path, f"loose crop {path}"))
  try:
    crop = align.align_face(rgb, landmarks, preprocess.IMAGE_SIZE)
  except ValueError as e:
    raise preprocess.ImageError(f"cannot align {path}: {e}") from e
  return base.encode_png(crop) if image_format == "png" else protocols.script_jpeg(crop)


@register
class Ijbc(base.Builder):
  """IJB-C aligned crops + template pairs; image_id = line index in the meta files."""

  name = "ijbc"
  LAYOUT = LAYOUT
  OPTIONS = {"subset": None, "image_format": "jpeg"}
  # 1.1.0: "jpeg" is the scripts' channel-swapped file (1.0.0 stored a true-RGB JPEG)
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First version.",
                   "1.1.0": "image_format='jpeg' stores the FIQA scripts' channel-swapped JPEG."}
  PAIR_KIND = "template"
  FEATURES = {
      "template_id": lambda: tfds.features.Scalar(np.int64),
      "media_id": lambda: tfds.features.Scalar(np.int64),
      "faceness": lambda: tfds.features.Scalar(np.float32),
      "landmarks": lambda: tfds.features.Tensor(shape=(5, 2), dtype=np.float32),
  }
  DESCRIPTION = "IJB-C loose crops aligned to the ArcFace template, 1:1 template pairs."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    if options["image_format"] not in ("jpeg", "png"):
      raise ValueError(f"ijbc: image_format must be 'jpeg' (the FIQA scripts' cv2.imwrite file: "
                       f"quality 95 of the channel-swapped crop) or 'png' (lossless), got "
                       f"{options['image_format']!r}")
    if options["subset"] is not None and int(options["subset"]) < 2:
      raise ValueError(f"ijbc: subset must be >= 2 templates, got {options['subset']}")
    root = manual_dir
    for candidate in (manual_dir, os.path.join(manual_dir, "IJBC"),
                      os.path.join(manual_dir, "IJB_release", "IJBC")):
      if os.path.isdir(os.path.join(candidate, "meta")):
        root = candidate
        break
    paths = {"loose_crop": base.require_dir(cls.name, os.path.join(root, "loose_crop"), LAYOUT)}
    for key, file in FILES.items():
      paths[key] = base.require_file(cls.name, os.path.join(root, "meta", file), LAYOUT)
    return paths

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    names, landmarks, faceness = read_five_points(paths["five_points"])
    tid_names, template_id, media_id = read_tid_mid(paths["tid_mid"])
    if not names:
      raise base.DataError(f"{paths['five_points']} is empty; an empty data set cannot be "
                           f"evaluated")
    for number, (a, b) in enumerate(zip(names, tid_names), 1):
      if a != b:
        raise base.DataError(f"IJB-C meta files disagree at line {number}: "
                             f"{FILES['five_points']} names {a!r} but {FILES['tid_mid']} names "
                             f"{b!r}. Both must list the same images in the same order (use the "
                             f"insightface IJB_release meta files together).")
    if len(names) != len(tid_names):
      raise base.DataError(f"IJB-C meta files have different lengths: {FILES['five_points']} "
                           f"{len(names)} lines, {FILES['tid_mid']} {len(tid_names)} lines")
    logging.info("ijbc: %d images in the meta files; reading the template pairs", len(names))
    table = read_int_table(paths["template_pairs"], 3)
    t1, t2, label = table[:, 0], table[:, 1], table[:, 2]
    if not np.isin(label, (0, 1)).all():
      bad = int(np.flatnonzero(~np.isin(label, (0, 1)))[0])
      raise base.DataError(f"{paths['template_pairs']}: row {bad + 1} has label {label[bad]}, "
                           f"expected 1 (genuine) or 0 (impostor)")
    known = np.unique(template_id)
    unknown = ~(np.isin(t1, known) & np.isin(t2, known))
    if unknown.any():
      rows = np.flatnonzero(unknown)
      raise base.DataError(f"{paths['template_pairs']}: {len(rows)} pairs name templates with no "
                           f"image in {FILES['tid_mid']} (first at row {rows[0] + 1}: "
                           f"{t1[rows[0]]} {t2[rows[0]]}). The pair file does not match the meta "
                           f"files.")
    duplicated = count_repeated_pairs(t1, t2)
    if duplicated:        # kept as listed (the protocol counts every row), but never silently
      logging.warning("%s: %d template pairs are listed more than once (in either order); each "
                      "row is a comparison of the EDC, as in the official evaluation",
                      paths["template_pairs"], duplicated)
    keep_images = np.ones(len(names), dtype=bool)
    if options["subset"] is not None:
      _, first = np.unique(template_id, return_index=True)
      chosen = template_id[np.sort(first)][:int(options["subset"])]
      keep_images = np.isin(template_id, chosen)
      keep_pairs = np.isin(t1, chosen) & np.isin(t2, chosen)
      t1, t2, label = t1[keep_pairs], t2[keep_pairs], label[keep_pairs]
      if len(t1) == 0:
        raise base.DataError(f"ijbc: the first {options['subset']} templates have no pairs "
                             f"between them; use a larger subset")
    rows = np.flatnonzero(keep_images)
    entries = []
    for k in rows:
      source = functools.partial(aligned_crop, os.path.join(paths["loose_crop"], names[k]),
                                 landmarks[k], options["image_format"])
      entries.append(base.ImageEntry(int(k), names[k], source, {
          "template_id": int(template_id[k]), "media_id": int(media_id[k]),
          "faceness": float(faceness[k]), "landmarks": landmarks[k]}))
    return base.Plan(entries, pair_a=t1, pair_b=t2, is_genuine=label.astype(bool),
                     record_arrays={"template_id": template_id[rows], "media_id": media_id[rows],
                                    "faceness": faceness[rows]},
                     metadata={"num_templates": int(len(np.unique(template_id[rows]))),
                               **({"default_channel_order": protocols.SCRIPT_CHANNEL_ORDER}
                                  if options["image_format"] == "jpeg" else {}),
                               "num_meta_lines": len(names)})
