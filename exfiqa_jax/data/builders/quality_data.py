"""The CR-FIQA prepared layout `quality_data/<dataset>/` that many users already have.

`image_path_list.txt`: one image path per line (written relative to the CR-FIQA checkout,
e.g. `quality_data/lfw/images/00000.jpg`; duplicates possible for XQLFW). `pair_list.txt`:
`name_a name_b label` rows, names with or without `.jpg`, labels possibly zero-padded
(docs/evaluation.md). These JPEGs were written by `cv2.imwrite` from RGB arrays, so they are
stored channel-swapped: the default channel order here is "bgr" (feed the file's pixels as
B,G,R, exactly what the official scripts fed the networks).
"""
from __future__ import annotations

import os

import tensorflow_datasets as tfds

from exfiqa_jax.data import pairs as pairs_lib
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/            (the CR-FIQA checkout, its quality_data/ folder, or quality_data/<dataset>)
    quality_data/<dataset>/
      image_path_list.txt  one path per line, e.g. quality_data/<dataset>/images/00000.jpg
      pair_list.txt        'name_a name_b label' (optional; needed for pair benchmarks)
      images/00000.jpg ...
  build with dataset="<dataset>" (e.g. lfw, XQLFW)"""


@register
class QualityData(base.Builder):
  """CR-FIQA `quality_data/<dataset>`; name = file stem, path = the line as listed."""

  name = "quality_data"
  LAYOUT = LAYOUT
  CONFIG_KEY = "dataset"
  OPTIONS = {"dataset": None, "pairs": True}
  PAIR_KIND = "image"
  DEFAULT_CHANNEL_ORDER = "bgr"
  FEATURES = {"path": tfds.features.Text}
  DESCRIPTION = "CR-FIQA quality_data/<dataset> (channel-swapped JPEGs, pair_list.txt)."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    dataset = options["dataset"]
    candidates = [os.path.join(manual_dir, "quality_data", dataset),
                  os.path.join(manual_dir, dataset), manual_dir]
    folder = next((c for c in candidates
                   if os.path.isfile(os.path.join(c, "image_path_list.txt"))), None)
    if folder is None:
      raise base.layout_error(cls.name, f"no image_path_list.txt for dataset {dataset!r} in "
                              f"any of {candidates}", LAYOUT)
    paths = {"folder": folder, "image_list": os.path.join(folder, "image_path_list.txt")}
    pair_file = os.path.join(folder, "pair_list.txt")
    if options["pairs"]:
      paths["pair_list"] = base.require_file(cls.name, pair_file, LAYOUT + "\n  (or build "
                                             "with pairs=False for images only)")
    return paths

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    folder = paths["folder"]
    with open(paths["image_list"], encoding="utf-8") as f:
      listed = [line.strip().split()[0] for line in f if line.strip()]
    if not listed:
      raise base.DataError(f"{paths['image_list']} lists no images; an empty data set cannot be "
                           f"evaluated")
    resolve = _path_resolver(folder, listed[0])
    name_to_id: dict[str, int] = {}
    entries, missing = [], []
    for line in dict.fromkeys(listed):          # duplicates (XQLFW) once, first-seen order
      name = pairs_lib.strip_extension(os.path.basename(line))
      if name in name_to_id:
        raise base.DataError(f"{paths['image_list']}: two different paths share the image name "
                             f"{name!r} (e.g. {line}); pair lists name images by file name, so "
                             f"names must be unique")
      file = resolve(line)
      if not os.path.isfile(file):
        missing.append(file)
      name_to_id[name] = len(entries)
      entries.append(base.ImageEntry(len(entries), name, file, {"path": line}))
    if missing and not options["skip_corrupt"]:
      raise base.DataError(f"quality_data: {len(missing)} listed images are missing (first: "
                           f"{missing[:3]}). Fix image_path_list.txt or pass "
                           f"--config.data.skip_corrupt=True (skip_corrupt=True to "
                           f"builders.load).")
    if "pair_list" not in paths:
      return base.Plan(entries)
    names_a, names_b, labels = pairs_lib.read_pair_file(paths["pair_list"])
    if not labels.size:
      raise base.DataError(f"{paths['pair_list']} holds no pairs; build with pairs=False for an "
                           f"image-only data set")
    try:
      a = pairs_lib.resolve_names(names_a, name_to_id, paths["pair_list"])
      b = pairs_lib.resolve_names(names_b, name_to_id, paths["pair_list"])
    except pairs_lib.PairError as e:
      raise base.DataError(f"{e} (IJB-C's pair_list.txt holds template ids: use the ijbc "
                           f"builder, or pairs=False)") from None
    return base.Plan(entries, pair_a=a, pair_b=b, is_genuine=labels)


def _path_resolver(folder: str, first: str):
  """Listed paths are relative to the CR-FIQA checkout; find the base that makes them exist."""
  root = os.path.dirname(os.path.dirname(folder))   # .../quality_data/<dataset> -> ...
  strategies = [
      lambda p: p if os.path.isabs(p) else os.path.join(root, p),
      lambda p: os.path.join(folder, p),
      lambda p: os.path.join(folder, "images", os.path.basename(p)),
      lambda p: os.path.join(folder, os.path.basename(p)),
  ]
  for strategy in strategies:
    if os.path.isfile(strategy(first)):
      return strategy
  return strategies[0]
