"""Rows to score from a list of raw photos: what a job (tasks/score.py) scores when its inputs
are photos, one row per selected face (docs/data.md, "Raw photos: detection and alignment").

Every process detects its share of the photos (p, p + P, ...); one all-gather of fixed-size
arrays gives every process every photo's faces, so all hosts agree on the rows.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from exfiqa_jax import identity
from exfiqa_jax.convert import mtcnn_keys
from exfiqa_jax.data import preprocess
from exfiqa_jax.detection import faces as faces_lib
from exfiqa_jax.detection import photos as photos_lib
from exfiqa_jax.detection.detector import Detector, Faces, get_detector
from exfiqa_jax.detection.settings import PhotoSettings


def align_identity(settings: PhotoSettings) -> dict[str, Any]:
  """What detected rows depend on (docs/caching.md), without loading the weights."""
  weights = settings.weights or mtcnn_keys.installed_data_dir() or ""
  return {"align": "detect", "face": settings.face, "detector": settings.detector.to_dict(),
          "weights": identity.file_identity(weights) if weights else ""}


@dataclasses.dataclass
class PhotoRows:
  """What a job scores when its inputs are raw photos: one row per selected face.

  reader: a pipeline reader of the aligned crops; names [R]: each row's photo name;
  records [R]; no_face / overflow: names of photos without a face / with a list cap hit;
  unreadable: {photo index: error} for photos that could not be decoded.
  """
  reader: Callable
  names: list[str]
  records: list[faces_lib.FaceRecord]
  no_face: list[str]
  overflow: list[str]
  unreadable: dict[int, str]

  def columns(self, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The appended per-row columns (see AlignedFaces.columns) of the rows kept."""
    cols = faces_lib.record_columns(self.records)
    return {k: v if keep is None else v[keep] for k, v in cols.items()}


_RECORD_WIDTH = 1 + 4 + 10     # score, box, landmarks


def _share_between_hosts(detections: list[Faces | None], shapes: list[tuple[int, int] | None],
                         total: int, max_faces: int
                         ) -> tuple[list[Faces | None], list[tuple[int, int] | None]]:
  """Process p detected photos p, p + P, ...; → every photo's detections and size on every
  process (one all-gather of fixed-size arrays)."""
  hosts, me = jax.process_count(), jax.process_index()
  per_host = -(-total // hosts)
  table = np.zeros((per_host, max_faces, _RECORD_WIDTH), np.float32)
  meta = np.full((per_host, 4), -1, np.int32)     # count (-1: unreadable/padding), overflow, H, W
  for slot, i in enumerate(range(me, total, hosts)):
    faces = detections[i]
    if faces is None:
      continue
    n = len(faces)
    meta[slot] = (n, int(faces.overflow), *shapes[i])
    table[slot, :n] = np.concatenate([faces.scores[:, None], faces.boxes,
                                      faces.landmarks.reshape(n, 10)], axis=1)
  table, meta = (np.asarray(x) for x in multihost_utils.process_allgather((table, meta)))
  out: list[Faces | None] = [None] * total
  out_shapes: list[tuple[int, int] | None] = [None] * total
  for host in range(hosts):
    for slot, i in enumerate(range(host, total, hosts)):
      n, overflow, h, w = (int(v) for v in meta[host, slot])
      if n < 0:
        continue
      rec = table[host, slot, :n]
      out[i] = Faces(rec[:, 1:5], rec[:, 0], rec[:, 5:].reshape(-1, 5, 2), bool(overflow))
      out_shapes[i] = (h, w)
  return out, out_shapes


def _detect_own_share(paths: Sequence[str], settings: PhotoSettings, detector: Detector,
                      progress: Callable[[int], None] | None):
  """This process's photos (p, p + P, ...) detected: (detections and sizes at every photo's
  index, None where another process has it or it is unreadable; {index: error})."""
  total = len(paths)
  mine = list(range(jax.process_index(), total, jax.process_count()))
  found, shapes, errors = photos_lib.detect_files([paths[i] for i in mine], detector,
                                                  workers=settings.decode_threads,
                                                  progress=progress)
  detections: list[Faces | None] = [None] * total
  photo_shapes: list[tuple[int, int] | None] = [None] * total
  unreadable = {}
  for local, i in enumerate(mine):
    detections[i], photo_shapes[i] = found[local], shapes[local]
    if local in errors:
      unreadable[i] = errors[local]
  return detections, photo_shapes, unreadable


def photo_rows(paths: Sequence[str], names: Sequence[str], settings: PhotoSettings,
               channel_order: str = "rgb", size: int = preprocess.IMAGE_SIZE,
               progress: Callable[[int], None] | None = None, detector: Detector | None = None
               ) -> PhotoRows:
  """Detects the faces of every photo (each process its share, then shared with all) and
  returns the rows to score: the primary face of each photo, or every face (`settings.face`).
  `detector`: default the cached one for `settings`."""
  detector = detector or get_detector(settings.detector, settings.weights or None,
                                      settings.batch_size)
  detections, photo_shapes, unreadable = _detect_own_share(paths, settings, detector, progress)
  if jax.process_count() > 1:
    detections, photo_shapes = _share_between_hosts(detections, photo_shapes, len(paths),
                                                    detector.config.max_faces)
    for i in range(len(paths)):
      if detections[i] is None and i not in unreadable:
        unreadable[i] = "unreadable (reported by another host)"
  records, no_face = faces_lib.face_records(detections, photo_shapes, settings.face)
  overflow = [names[i] for i, d in enumerate(detections) if d is not None and d.overflow]
  return PhotoRows(photos_lib.aligned_reader(paths, records, channel_order, size),
                   [names[r.image] for r in records], records, [names[i] for i in no_face],
                   overflow, unreadable)
