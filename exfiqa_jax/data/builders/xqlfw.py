"""XQLFW: the LFW pair protocol on cross-quality images (docs/evaluation.md).

`xqlfw_pairs.txt`: the first line is a header (skipped); `name i j` is a genuine pair,
`name1 i name2 j` an impostor pair; image `xqlfw_aligned_112/<name>/<name>_<i:04d>.jpg`.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from exfiqa_jax.data import protocols
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/
    xqlfw_pairs.txt        header line, then 'name i j' (genuine) or 'name1 i name2 j' (impostor)
    xqlfw_aligned_112/
      <name>/<name>_<i:04d>.jpg   e.g. Aaron_Peirsol/Aaron_Peirsol_0001.jpg"""


def parse_pairs(path: str) -> list[tuple[str, int, str, int, bool]]:
  """→ [(name_a, i, name_b, j, is_genuine)]; any malformed line is an error naming it."""
  out = []
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  for number, line in enumerate(lines[1:], 2):
    tokens = line.split()
    if not tokens:
      continue
    try:
      if len(tokens) == 3:
        out.append((tokens[0], int(tokens[1]), tokens[0], int(tokens[2]), True))
      elif len(tokens) == 4:
        out.append((tokens[0], int(tokens[1]), tokens[2], int(tokens[3]), False))
      else:
        raise ValueError(f"{len(tokens)} tokens")
    except ValueError as e:
      raise base.DataError(f"{path}:{number}: expected 'name i j' (genuine) or 'name1 i name2 j' "
                           f"(impostor), got {line.strip()!r} ({e})") from None
  return out


@register
class Xqlfw(base.Builder):
  """XQLFW pairs; name = `<name>_<i:04d>`, identity = `<name>`; image_id = first appearance."""

  name = "xqlfw"
  LAYOUT = LAYOUT
  # image_format: "stored" = the release's files; "jpeg" = what CR-FIQA's extract_xqlfw.py
  # writes from them (channel-swapped quality-95 JPEG, read back "bgr"; docs/data.md, Protocols)
  OPTIONS = {"image_format": "stored"}
  PAIR_KIND = "image"
  FEATURES = {"identity": tfds.features.Text}
  DESCRIPTION = "XQLFW cross-quality LFW pairs."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    if options.get("image_format", "stored") not in ("stored", "jpeg"):
      raise ValueError(f"xqlfw: image_format must be 'stored' (the release's files) or 'jpeg' "
                       f"(as CR-FIQA's extract_xqlfw.py re-encodes them), got "
                       f"{options['image_format']!r}")
    return {"pairs": base.require_file(cls.name, os.path.join(manual_dir, "xqlfw_pairs.txt"),
                                       LAYOUT),
            "images": base.require_dir(cls.name, os.path.join(manual_dir, "xqlfw_aligned_112"),
                                       LAYOUT)}

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    rows = parse_pairs(paths["pairs"])
    if not rows:
      raise base.DataError(f"{paths['pairs']} lists no pairs after its header line; an empty "
                           f"data set cannot be evaluated")
    ids: dict[tuple[str, int], int] = {}
    entries = []
    missing = []
    for name_a, i, name_b, j, _ in rows:
      for key in ((name_a, i), (name_b, j)):
        if key not in ids:
          ids[key] = len(ids)
          file = os.path.join(paths["images"], key[0], f"{key[0]}_{key[1]:04d}.jpg")
          if not os.path.isfile(file):
            missing.append(file)
          name = f"{key[0]}_{key[1]:04d}"
          source = (functools.partial(protocols.script_file, file, name)
                    if options.get("image_format", "stored") == "jpeg" else file)
          entries.append(base.ImageEntry(ids[key], name, source, {"identity": key[0]}))
    if missing and not options["skip_corrupt"]:
      raise base.DataError(f"xqlfw: {len(missing)} images named by {paths['pairs']} are missing "
                           f"(first: {missing[:3]}). Check the aligned folder, or pass "
                           f"--config.data.skip_corrupt=True (skip_corrupt=True to builders."
                           f"load) to drop them and their pairs.")
    a = np.array([ids[(r[0], r[1])] for r in rows], dtype=np.int64)
    b = np.array([ids[(r[2], r[3])] for r in rows], dtype=np.int64)
    g = np.array([r[4] for r in rows], dtype=bool)
    return base.Plan(entries, pair_a=a, pair_b=b, is_genuine=g,
                     metadata=({"default_channel_order": protocols.SCRIPT_CHANNEL_ORDER}
                               if options.get("image_format", "stored") == "jpeg" else {}))
