"""From detections to aligned faces: which faces of a photo become rows, their aligned crops
and where each came from (docs/data.md, "Raw photos: detection and alignment").

`select_faces` picks the primary face (size and centrality, facenet-pytorch's
"center_weighted_size") or keeps all; `detect_and_align` (also `exfiqa_jax.detect_and_align`)
returns aligned crops and a record of where every crop came from.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from exfiqa_jax.data import align as align_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.detection import settings
from exfiqa_jax.detection.detector import Detector, Faces, as_rgb, get_detector

CENTER_WEIGHT = 2.0     # facenet-pytorch select_boxes(center_weight=2.0)


def face_order(faces: Faces, height: int, width: int, face: str = "primary") -> np.ndarray:
  """Indices of `faces` in preference order for the `face` mode: "primary" = area minus
  2 × squared distance of the box centre from the photo centre (facenet-pytorch
  "center_weighted_size": big and central wins), "largest", "probability" (= the detector's
  order), "all" (every face, primary first)."""
  settings.check_face_mode(face)
  if not len(faces):
    return np.zeros((0,), np.int64)
  b = faces.boxes.astype(np.float64)
  area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
  if face == "probability":
    return np.arange(len(faces))
  if face == "largest":
    return np.argsort(-area, kind="stable")
  centre = np.stack([(b[:, 0] + b[:, 2]) / 2 - width / 2, (b[:, 1] + b[:, 3]) / 2 - height / 2],
                    axis=1)
  return np.argsort(-(area - CENTER_WEIGHT * (centre ** 2).sum(1)), kind="stable")


def select_faces(faces: Faces, height: int, width: int, face: str = "primary") -> np.ndarray:
  """The faces to keep: the first of `face_order` (or all of them for face="all")."""
  order = face_order(faces, height, width, face)
  return order if face == "all" else order[:1]


def face_columns(face: np.ndarray, num_faces: np.ndarray, score: np.ndarray, box: np.ndarray,
                 landmarks: np.ndarray) -> dict[str, np.ndarray]:
  """{name: [N]} in scores.csv order: face, num_faces, det_score, box_x1, box_y1, box_x2,
  box_y2, lm1_x, lm1_y, ..., lm5_x, lm5_y (docs/data.md)."""
  cols = {"face": np.asarray(face), "num_faces": np.asarray(num_faces),
          "det_score": np.asarray(score)}
  box, landmarks = np.asarray(box).reshape(-1, 4), np.asarray(landmarks).reshape(-1, 5, 2)
  for k, name in enumerate(("box_x1", "box_y1", "box_x2", "box_y2")):
    cols[name] = box[:, k]
  for p in range(5):
    cols[f"lm{p + 1}_x"] = landmarks[:, p, 0]
    cols[f"lm{p + 1}_y"] = landmarks[:, p, 1]
  return cols


@dataclasses.dataclass(frozen=True)
class FaceRecord:
  """One face to crop: which photo, its rank, the photo's face count, and the detection."""
  image: int
  face: int
  num_faces: int
  score: float
  box: np.ndarray
  landmarks: np.ndarray


def _record_fields(records: Sequence[FaceRecord]) -> dict[str, np.ndarray]:
  """The records' fields after `image` as arrays: face, num_faces [N], score [N], box [N, 4],
  landmarks [N, 5, 2] (`face_columns`' arguments and `AlignedFaces`' fields)."""
  return {"face": np.asarray([r.face for r in records], np.int64),
          "num_faces": np.asarray([r.num_faces for r in records], np.int64),
          "score": np.asarray([r.score for r in records], np.float32),
          "box": np.asarray([r.box for r in records], np.float32).reshape(-1, 4),
          "landmarks": np.asarray([r.landmarks for r in records], np.float32).reshape(-1, 5, 2)}


def record_columns(records: Sequence[FaceRecord]) -> dict[str, np.ndarray]:
  """The appended per-row columns (`face_columns`) of a list of records."""
  return face_columns(**_record_fields(records))


def face_records(detections: Sequence[Faces | None],
                 shapes: Sequence[tuple[int, int] | None],
                 face: str = "primary") -> tuple[list[FaceRecord], list[int]]:
  """Per-photo detections and (H, W) sizes → (the faces to crop, in photo order; photos with
  no face). A `None` detection (unreadable photo; its size may be None) is in neither list."""
  records, no_face = [], []
  for i, (faces, shape) in enumerate(zip(detections, shapes)):
    if faces is None:
      continue
    if not len(faces):
      no_face.append(i)
      continue
    for rank, j in enumerate(select_faces(faces, shape[0], shape[1], face)):
      records.append(FaceRecord(i, rank, len(faces), float(faces.scores[j]),
                                faces.boxes[j].copy(), faces.landmarks[j].copy()))
  return records, no_face


@dataclasses.dataclass
class AlignedFaces:
  """Aligned crops of the faces found in a list of photos, with where each came from.

  crops uint8 [N, size, size, 3]; per crop: image [N] (index of its photo), face [N] (its rank
  in the photo's `face_order`), num_faces [N] (faces found in that photo), score [N],
  box [N, 4], landmarks [N, 5, 2]; no_face: indices of photos without any face; overflow:
  indices of photos where a detector list cap was hit.
  """
  crops: np.ndarray
  image: np.ndarray
  face: np.ndarray
  num_faces: np.ndarray
  score: np.ndarray
  box: np.ndarray
  landmarks: np.ndarray
  no_face: list[int]
  overflow: list[int]

  def columns(self) -> dict[str, np.ndarray]:
    """The per-crop columns scores.csv appends (see `face_columns`)."""
    return face_columns(self.face, self.num_faces, self.score, self.box, self.landmarks)


def aligned_faces(photos: Sequence[np.ndarray], records: Sequence[FaceRecord],
                  no_face: Sequence[int], overflow: Sequence[int] = (),
                  size: int = preprocess.IMAGE_SIZE) -> AlignedFaces:
  """The records' crops (`align.align_face` of their landmarks on the `as_rgb` photos) with
  their fields as arrays."""
  crops = np.stack([align_lib.align_face(photos[r.image], r.landmarks, size)
                    for r in records]) if records else np.zeros((0, size, size, 3), np.uint8)
  return AlignedFaces(crops=crops, image=np.asarray([r.image for r in records], np.int64),
                      **_record_fields(records), no_face=list(no_face), overflow=list(overflow))


def detect_and_align(photos: Sequence[np.ndarray], face: str = "primary",
                     detector: Detector | None = None, size: int = preprocess.IMAGE_SIZE
                     ) -> AlignedFaces:
  """Raw photos (uint8 RGB, any sizes) → aligned crops of their faces (the primary face of
  each photo by default; face="all": every face) with boxes, landmarks, confidences, and the
  photos with no face. The crops are `align.align_face` of the detected landmarks."""
  settings.check_face_mode(face)
  detector = detector or get_detector()
  photos = [as_rgb(p) for p in photos]
  detections = detector.detect(photos)
  records, no_face = face_records(detections, [p.shape[:2] for p in photos], face)
  overflow = [i for i, d in enumerate(detections) if d.overflow]
  return aligned_faces(photos, records, no_face, overflow, size)
