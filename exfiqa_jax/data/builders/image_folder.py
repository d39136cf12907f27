"""A folder of identities (one sub-folder per identity): training data and users' own sets.

Records carry the relative path as name, the identity folder name, and an integer label
(identity folders in sorted order). An optional pair list (`name_a name_b label`, names are
relative paths with or without extension) makes it a pair benchmark. Only regular image files
are records: hidden and system folders, macOS `._` files, names that are not UTF-8, pipes and
other formats are skipped with one log line (data/preprocess.py). Option align="detect"
takes raw photos: each record is the aligned crop of the photo's primary face, with
record_det_score/box/landmarks.npy beside it; photos without a face are left out and listed in
no_face.txt (docs/data.md, "Raw photos: detection and alignment"). data/ holds no networks: the
aligner for an align mode is registered from above (`register_aligner`; "detect" by importing
exfiqa_jax.detection.folder).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow_datasets as tfds

from exfiqa_jax.data import pairs as pairs_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/
    <identity_a>/img1.jpg, img2.png, ...     one sub-folder per identity (nested folders allowed)
    <identity_b>/...
  optional pair list (option pair_list=PATH, absolute or relative to manual_dir):
    <identity_a>/img1.jpg <identity_b>/img7.jpg 0      (1 = same identity, 0 = different)"""

# entries → (each entry's new source, record arrays [N, ...], metadata for exfiqa_info.json)
Aligner = Callable[[Sequence[base.ImageEntry]],
                   tuple[list[Any], dict[str, np.ndarray], dict[str, Any]]]
ALIGNERS: dict[str, Aligner] = {}


def register_aligner(mode: str, aligner: Aligner) -> None:
  """Makes option align=`mode` turn the planned photos into aligned crops with `aligner`."""
  ALIGNERS[mode] = aligner


def aligner_for(mode: str) -> Aligner:
  """The aligner registered for option align=`mode`; a ValueError naming what to import."""
  if mode not in ALIGNERS:
    raise ValueError(f"image_folder: no aligner for align={mode!r} (registered: "
                     f"{sorted(ALIGNERS)}); align='detect' needs the face detector: import "
                     "exfiqa_jax.detection.folder before building")
  return ALIGNERS[mode]


@register
class ImageFolder(base.Builder):
  """Identity folders; name = `<identity>/<file>`, label = identity index; image_id = sorted order."""

  name = "image_folder"
  LAYOUT = LAYOUT
  OPTIONS = {"pair_list": None, "align": "none"}   # align="detect": raw photos (ALIGNERS)
  PAIR_KIND = "image"
  FEATURES = {"identity": tfds.features.Text, "label": lambda: tfds.features.Scalar(np.int64)}
  DESCRIPTION = "Images in one sub-folder per identity, optional pair list."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    paths = {"root": manual_dir}
    if options["pair_list"] is not None:
      pair_list = os.path.join(manual_dir, os.fspath(options["pair_list"]))
      paths["pair_list"] = base.require_file(cls.name, pair_list, LAYOUT)
    return paths

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    root = paths["root"]
    identities, loose, skipped = preprocess.scan_identities(root)
    if loose:
      raise base.DataError(f"image_folder: {len(loose)} images lie directly in {root} (first: "
                           f"{loose[:3]}); put every image in its identity's sub-folder")
    entries, labels = [], []
    for label, identity in enumerate(identities):
      files, left_out = preprocess.scan_images(os.path.join(root, identity))
      skipped.extend(left_out)
      for file in files:
        name = os.path.relpath(file, root).replace(os.sep, "/")
        entries.append(base.ImageEntry(len(entries), name, file,
                                       {"identity": identity, "label": label}))
        labels.append(label)
    preprocess.log_skipped(root, skipped)       # one line for the whole tree
    if not entries:
      raise base.DataError(f"image_folder: no images under {root} (expected one sub-folder per "
                           f"identity holding {', '.join(preprocess.IMAGE_EXTENSIONS[:3])}, ...)"
                           + (f"; {len(skipped)} entries that are not images were skipped (see "
                              "the log)" if skipped else ""))
    plan = base.Plan(entries, record_arrays={"label": np.asarray(labels, dtype=np.int64)},
                     metadata={"num_identities": len(identities), "identities": identities})
    if options.get("align", "none") != "none":   # detect → align; docs/data.md
      sources, arrays, metadata = aligner_for(options["align"])(entries)
      plan.images = [dataclasses.replace(e, source=s) for e, s in zip(entries, sources)]
      plan.record_arrays.update(arrays)
      plan.metadata.update(metadata)
    if "pair_list" in paths:
      name_to_id = {}
      for e in entries:
        name_to_id.setdefault(e.name, e.image_id)
        name_to_id.setdefault(pairs_lib.strip_extension(e.name), e.image_id)
      names_a, names_b, is_genuine = pairs_lib.read_pair_file(paths["pair_list"])
      if not is_genuine.size:
        raise base.DataError(f"{paths['pair_list']} holds no pairs")
      try:
        plan.pair_a = pairs_lib.resolve_names(names_a, name_to_id, paths["pair_list"])
        plan.pair_b = pairs_lib.resolve_names(names_b, name_to_id, paths["pair_list"])
      except pairs_lib.PairError as e:
        raise base.DataError(str(e)) from None
      plan.is_genuine = is_genuine
    return plan
