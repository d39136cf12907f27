"""Adience as the FIQA papers use it (SPEC-EDC §2.3): aligned faces, all unordered pairs.

Input is the output of CR-FIQA's `extract_adience.py`: a flat folder of aligned crops named
`p_<person>_img_<k>.jpg`. Pairs are all (i, j), i < j, label = same person. The papers
enumerate in `os.listdir` order (filesystem dependent); here the order is the sorted file
names, so the build is reproducible. The full set is ~10^8 pairs: `max_pairs` caps it with a
seeded sample (`keep_all_genuine=True` keeps every genuine pair and samples impostors).
"""
from __future__ import annotations

import os
import re

import numpy as np
import tensorflow_datasets as tfds

from exfiqa_jax.data import pairs as pairs_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/            flat folder of aligned 112x112 crops (CR-FIQA extract_adience.py)
    p_<person>_img_<k>.jpg    e.g. p_113_img_0.jpg; <person> is the Adience face id"""

_NAME = re.compile(r"^p_(?P<person>.+)_img_(?P<k>\d+)$")


@register
class Adience(base.Builder):
  """Adience all-pairs; name = file stem, identity = `<person>`; image_id = sorted position."""

  name = "adience"
  LAYOUT = LAYOUT
  OPTIONS = {"max_pairs": None, "keep_all_genuine": False, "seed": 0}
  PAIR_KIND = "image"
  FEATURES = {"identity": tfds.features.Text}
  DESCRIPTION = "Adience aligned faces, all unordered pairs (optionally capped)."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    files = [f for f in os.listdir(manual_dir) if f.lower().endswith(preprocess.IMAGE_EXTENSIONS)]
    if not files:
      raise base.layout_error(cls.name, f"no images in {manual_dir}", LAYOUT)
    return {"images": manual_dir}

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    folder = paths["images"]
    files = sorted(f for f in os.listdir(folder) if f.lower().endswith(preprocess.IMAGE_EXTENSIONS))
    bad = [f for f in files if not _NAME.match(os.path.splitext(f)[0])]
    if bad:
      raise base.DataError(f"adience: {len(bad)} images in {folder} are not named "
                           f"p_<person>_img_<k>.<ext> (first: {bad[:3]}); the person id comes "
                           f"from the name. Rename or remove them.")
    if len(files) < 2:
      raise base.DataError(f"adience: {folder} holds {len(files)} image(s); pairs need >= 2")
    persons = [_NAME.match(os.path.splitext(f)[0]).group("person") for f in files]
    entries = [base.ImageEntry(k, os.path.splitext(f)[0], os.path.join(folder, f),
                               {"identity": p}) for k, (f, p) in enumerate(zip(files, persons))]
    _, identity = np.unique(np.asarray(persons), return_inverse=True)
    a, b, g = pairs_lib.all_unordered_pairs(identity, options["max_pairs"],
                                            options["keep_all_genuine"], options["seed"])
    return base.Plan(entries, pair_a=a, pair_b=b, is_genuine=g,
                     metadata={"num_all_pairs": pairs_lib.num_unordered_pairs(len(files))})
