"""Identity folders of raw photos: the `image_folder` builder's option align="detect"
(data/builders/image_folder.py; docs/data.md, "Raw photos: detection and alignment").

The builder lives in data/, which holds no networks; importing this module registers the
detector as its "detect" aligner (`image_folder.register_aligner`). Each record is then the
aligned crop of its photo's primary face, with det_score / det_box / det_landmarks arrays
beside the records; photos without a face raise NoFaceError when read (the builder leaves
them out and lists them in no_face.txt).
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import numpy as np

from exfiqa_jax.data import align as align_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.data.builders import base, image_folder
from exfiqa_jax.detection import faces as faces_lib
from exfiqa_jax.detection import photos as photos_lib
from exfiqa_jax.detection.detector import Detector, get_detector


class NoFaceError(preprocess.ImageError):
  """A photo in which the detector found no face (listed in no_face.txt, never dropped
  silently)."""
  no_face = True


def _aligned_png(path: str, landmarks: np.ndarray, name: str) -> bytes:
  try:
    return base.encode_png(align_lib.align_face(photos_lib.read_photo(path, name), landmarks))
  except ValueError as e:
    raise preprocess.ImageError(f"cannot align {name}: {e}") from e


def _no_face(name: str) -> bytes:
  raise NoFaceError(f"no face detected in {name}")


def align_entries(entries: Sequence[base.ImageEntry], detector: Detector | None = None,
                  face: str = "primary"
                  ) -> tuple[list[Any], dict[str, np.ndarray], dict[str, Any]]:
  """Builder entries (each with a file path as source) → (the new source of every entry: a
  producer of the aligned crop of its primary face, one raising NoFaceError for a photo
  without a face, the path itself for an unreadable file, which the builder reports; record
  arrays det_score [N], det_box [N, 4], det_landmarks [N, 5, 2]; metadata for
  exfiqa_info.json)."""
  if face == "all":
    raise ValueError("a builder keeps one face per image; use face='primary', 'largest' or "
                     "'probability'")
  detector = detector or get_detector()
  paths = [os.fspath(e.source) for e in entries]
  detections, shapes, errors = photos_lib.detect_files(paths, detector)
  records, _ = faces_lib.face_records(detections, shapes, face)
  by_image = {r.image: r for r in records}
  score = np.zeros((len(entries),), np.float32)
  box = np.zeros((len(entries), 4), np.float32)
  landmarks = np.zeros((len(entries), 5, 2), np.float32)
  sources: list[Any] = []
  for i, entry in enumerate(entries):
    record = by_image.get(i)
    if record is not None:
      score[i], box[i], landmarks[i] = record.score, record.box, record.landmarks
      sources.append(functools.partial(_aligned_png, paths[i], record.landmarks, entry.name))
    elif i not in errors:
      sources.append(functools.partial(_no_face, entry.name))
    else:                     # unreadable files keep their path: the builder reports them
      sources.append(entry.source)
  metadata = {"align": {"align": "detect", "face": face, "detector": detector.config.to_dict(),
                        "num_no_face": len(entries) - len(records) - len(errors),
                        "num_overflow": sum(bool(d and d.overflow) for d in detections)}}
  return sources, {"det_score": score, "det_box": box, "det_landmarks": landmarks}, metadata


image_folder.register_aligner("detect", align_entries)
