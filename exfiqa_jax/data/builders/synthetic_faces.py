"""The synthetic-faces benchmark (exfiqa_jax/data/synthetic.py) as a TFDS data set.

Nothing to download and no manual_dir: the records are rendered from the options, so the same
options always build the same bytes. Every record carries its identity, label, degradation
severity and kind; the val and test splits carry their pair lists (all genuine pairs and a seeded
sample of impostors), so they are pair benchmarks like any other:

    source, info = builders.load("synthetic_faces/test", data_dir=DIR)
    info.record_arrays["severity"]    # [N] float, 0 = clean
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from exfiqa_jax.data import synthetic
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

_SIZES = synthetic.SplitSizes()     # the split defaults live in one place
LAYOUT = "  (none: synthetic_faces is rendered from its options; no manual_dir is needed)"


@register
class SyntheticFaces(base.Builder):
  """Identity-disjoint splits of procedurally rendered faces with recorded degradations."""

  name = "synthetic_faces"
  LAYOUT = LAYOUT
  NEEDS_MANUAL_DIR = False
  CONFIG_KEY = "split"
  OPTIONS = {"split": "test", "seed": 0, "train_identities": _SIZES.train,
             "val_identities": _SIZES.val, "test_identities": _SIZES.test,
             "per_identity": _SIZES.per_identity, "clean_fraction": synthetic.CLEAN_FRACTION,
             "gamma": synthetic.GAMMA, "degraded": True, "impostors_per_genuine": 10.0}
  PAIR_KIND = "image"
  FEATURES = {"identity": lambda: tfds.features.Scalar(np.int64),
              "label": lambda: tfds.features.Scalar(np.int64),
              "severity": lambda: tfds.features.Scalar(np.float32),
              "kind": lambda: tfds.features.Scalar(np.int64)}
  DESCRIPTION = "Synthetic faces with recorded degradations (blur, noise, downscale, " \
                "occlusion, low light, JPEG); identity-disjoint train/val/test."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    if options["split"] not in synthetic.SPLITS:
      raise ValueError(f"synthetic_faces: split must be one of {synthetic.SPLITS}, got "
                       f"{options['split']!r}")
    return {}

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    sizes = synthetic.SplitSizes(train=options["train_identities"],
                                 val=options["val_identities"], test=options["test_identities"],
                                 per_identity=options["per_identity"])
    faces = synthetic.make_split(options["seed"], options["split"], sizes,
                                 degraded=options["degraded"],
                                 clean_fraction=options["clean_fraction"], gamma=options["gamma"])
    entries = [base.ImageEntry(k, name, lambda k=k: base.encode_png(faces.images[k]),
                               {"identity": int(faces.identity[k]), "label": int(faces.label[k]),
                                "severity": float(faces.severity[k]), "kind": int(faces.kind[k])})
               for k, name in enumerate(faces.names)]
    arrays = {"severity": faces.severity, "kind": faces.kind, "label": faces.label}
    if options["split"] == "train":
      return base.Plan(entries, record_arrays=arrays)
    pairs, genuine = synthetic.make_pairs(faces.label, options["seed"],
                                          options["impostors_per_genuine"])
    return base.Plan(entries, pair_a=pairs[:, 0], pair_b=pairs[:, 1], is_genuine=genuine,
                     record_arrays=arrays, metadata={"degradations": list(synthetic.DEGRADATIONS)})
