"""Adience as the FIQA papers use it (docs/evaluation.md): aligned faces, all unordered pairs.

Input is the output of CR-FIQA's `extract_adience.py`: a flat folder of aligned crops named
`p_<person>_img_<k>.jpg`. Pairs are all (i, j), i < j, label = same person. The papers
enumerate in `os.listdir` order (filesystem dependent); here the order is the sorted file
names, so the build is reproducible. The full set is ~10^8 pairs: `max_pairs` caps it with a
seeded sample (`keep_all_genuine=True` keeps every genuine pair and samples impostors).
The crops are channel-swapped as the script wrote them, so the default channel order is "bgr".
With the release's fold files the records get `age` and `gender` per face id
(record_age.npy, record_gender.npy; exfiqa_jax/data/demographics.py) for per-group EDC.
"""
from __future__ import annotations

import os
import re

import numpy as np
from absl import logging
import tensorflow_datasets as tfds

from exfiqa_jax.data import demographics
from exfiqa_jax.data import pairs as pairs_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/            flat folder of aligned 112x112 crops (CR-FIQA extract_adience.py)
    p_<person>_img_<k>.jpg    e.g. p_113_img_0.jpg; <person> is the Adience face id
    fold_<n>_data.txt         optional (here or in the folder of option folds=...): the
                              release's fold files, for the age and gender of every face id"""

_NAME = re.compile(r"^p_(?P<person>.+)_img_(?P<k>\d+)$")


@register
class Adience(base.Builder):
  """Adience all-pairs; name = file stem, identity = `<person>`; image_id = sorted position."""

  name = "adience"
  LAYOUT = LAYOUT
  OPTIONS = {"max_pairs": None, "keep_all_genuine": False, "seed": 0, "folds": None}
  PAIR_KIND = "image"
  # extract_adience.py writes its crops channel-swapped (cv2.imwrite of an RGB-ordered array):
  # read as "bgr" they are RGB again, exactly what cv2.imread gave the scripts (docs/data.md).
  DEFAULT_CHANNEL_ORDER = "bgr"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "First version.",
                   "1.1.0": "Channel-swapped crops read as bgr; age and gender from fold files."}
  FEATURES = {"identity": tfds.features.Text}
  DESCRIPTION = "Adience aligned faces, all unordered pairs (optionally capped)."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    files = [f for f in os.listdir(manual_dir) if f.lower().endswith(preprocess.IMAGE_EXTENSIONS)]
    if not files:
      raise base.layout_error(cls.name, f"no images in {manual_dir}", LAYOUT)
    paths = {"images": manual_dir}
    folder = os.path.expanduser(options.get("folds") or manual_dir)
    if options.get("folds") and not demographics.fold_files(folder):
      raise base.layout_error(cls.name, f"folds={options['folds']!r} holds no "
                              f"{demographics.FOLD_PATTERN} files", LAYOUT)
    for k, path in enumerate(demographics.fold_files(folder)):
      paths[f"fold_{k}"] = path
    return paths

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    folder = paths["images"]
    listed = sorted(f for f in os.listdir(folder) if f.lower().endswith(preprocess.IMAGE_EXTENSIONS))
    files = [f for f in listed      # regular image files only: no '._' metadata, pipes, folders
             if preprocess.skip_reason(f) is None and os.path.isfile(os.path.join(folder, f))]
    if len(files) < len(listed):
      logging.info("adience: %d entries of %s named like images are skipped (hidden, macOS '._' "
                   "metadata, or not regular files): %s", len(listed) - len(files), folder,
                   sorted(set(listed) - set(files))[:3])
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
    record_arrays = {}
    folds = [v for k, v in sorted(paths.items()) if k.startswith("fold_")]
    if folds:                  # per-group EDC labels (exfiqa_jax/data/demographics.py)
      try:
        labels = demographics.read_folds(folds)
      except demographics.FoldFileError as e:
        raise base.DataError(f"adience: {e}") from None
      record_arrays = {key: np.asarray([labels[key].get(p, "") for p in persons], dtype=str)
                       for key in ("age", "gender")}
    return base.Plan(entries, pair_a=a, pair_b=b, is_genuine=g, record_arrays=record_arrays,
                     metadata={"num_all_pairs": pairs_lib.num_unordered_pairs(len(files)),
                               "fold_files": folds})
