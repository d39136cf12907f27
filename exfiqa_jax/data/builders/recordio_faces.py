"""insightface RecordIO (`train.rec`/`train.idx`/`property`) re-written as array_record.

For users who prefer TFDS array_record records to reading the `.rec` itself (training reads either:
docs/data.md, "insightface RecordIO"). Records carry name = `<record key>`, image_id = the
record key, the identity label, and the JPEG exactly as stored in the `.rec`; the identity count
of `property` is in exfiqa_info.json (`num_identities`). The verification `.bin` sets beside
them are the `verification_bin` builder's, with the same manual_dir.
"""
from __future__ import annotations

import functools
import os

import numpy as np
import tensorflow_datasets as tfds

from exfiqa_jax.data import recordio
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/                    insightface faces_emore (MS1MV2), glint360k, ...
    train.rec                      MXNet RecordIO: header record 0, then one record per image
    train.idx                      <key>\\t<byte offset> per record
    property                       <identities>,112,112  (optional: else the largest label + 1)"""


@register
class RecordioFaces(base.Builder):
  """An insightface RecordIO training set; name = record key, label = the record's label."""

  name = "recordio_faces"
  LAYOUT = LAYOUT
  PAIR_KIND = None
  FEATURES = {"label": lambda: tfds.features.Scalar(np.int64)}
  DESCRIPTION = "insightface MXNet RecordIO face set (train.rec / train.idx / property)."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    base.require_dir(cls.name, manual_dir, LAYOUT)
    paths = {name: base.require_file(cls.name, os.path.join(manual_dir, f"train.{name}"), LAYOUT)
             for name in ("rec", "idx")}
    if os.path.isfile(os.path.join(manual_dir, "property")):
      paths["property"] = os.path.join(manual_dir, "property")
    return paths

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    try:
      faces = recordio.FaceRecords(os.path.dirname(paths["rec"]))
      labels = faces.labels
    except recordio.RecordIOError as e:
      raise base.DataError(f"{self.name}: {e}") from None
    entries = [base.ImageEntry(int(key), str(int(key)), functools.partial(faces.image, k),
                               {"label": int(labels[k])})
               for k, key in enumerate(faces.keys.tolist())]
    return base.Plan(entries, record_arrays={"label": labels.astype(np.int64)},
                     metadata={"num_identities": faces.num_classes})
