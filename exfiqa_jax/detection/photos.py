"""Photo files: decode at full size, detect in size buckets, align on demand (docs/data.md,
"Raw photos: detection and alignment").

`detect_files` decodes a list of files a chunk at a time in threads and detects them;
`aligned_reader` is a pipeline reader (exfiqa_jax/data/pipeline.py) that decodes a photo again
when its row is read and warps it with the detected landmarks, so no crop is held in memory.
"""
from __future__ import annotations

import concurrent.futures
import os
from typing import Callable, Sequence

import numpy as np

from exfiqa_jax.data import align as align_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.detection.detector import Detector, Faces
from exfiqa_jax.detection.faces import FaceRecord


def read_photo(path: str | os.PathLike, label: str | None = None) -> np.ndarray:
  """A photo file → uint8 [H, W, 3] RGB at its own size, upright by its EXIF orientation as
  every decode is (phone photos are stored sideways; MTCNN finds upright faces; docs/data.md).
  ImageError when undecodable."""
  label = label or os.fspath(path)
  image = preprocess.open_rgb(path, label)
  if min(image.size) < 12:
    raise preprocess.ImageError(f"image {label} is {image.size[0]}x{image.size[1]}: too small "
                                "to hold a detectable face")
  return np.asarray(image, dtype=np.uint8)


def _read_or_error(path: str) -> np.ndarray | preprocess.ImageError:
  try:
    return read_photo(path)
  except preprocess.ImageError as e:
    return e


def detect_files(paths: Sequence[str], detector: Detector, chunk: int = 64,
                 workers: int = 4, progress: Callable[[int], None] | None = None
                 ) -> tuple[list[Faces | None], list[tuple[int, int] | None], dict[int, str]]:
  """Detections of every file: (Faces or None when unreadable, (H, W) or None, {index:
  error}). Files are decoded `chunk` at a time in threads, then detected in size buckets."""
  detections: list[Faces | None] = [None] * len(paths)
  shapes: list[tuple[int, int] | None] = [None] * len(paths)
  errors: dict[int, str] = {}
  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    for start in range(0, len(paths), chunk):
      indices = list(range(start, min(start + chunk, len(paths))))
      photos = list(pool.map(_read_or_error, [paths[i] for i in indices]))
      good = [(i, p) for i, p in zip(indices, photos) if not isinstance(p, Exception)]
      for i, p in zip(indices, photos):
        if isinstance(p, Exception):
          errors[i] = str(p)
      found = detector.detect([p for _, p in good])
      for (i, p), faces in zip(good, found):
        detections[i], shapes[i] = faces, p.shape[:2]
      if progress is not None:
        progress(len(indices))
  return detections, shapes, errors


def aligned_reader(paths: Sequence[str], records: Sequence[FaceRecord],
                   channel_order: str = "rgb", size: int = preprocess.IMAGE_SIZE):
  """A pipeline reader (exfiqa_jax/data/pipeline.py) whose row k is the aligned crop of
  `records[k]`: its photo decoded again and warped with the detected landmarks."""
  preprocess.check_channel_order(channel_order)

  def read(rows):
    out = np.zeros((len(rows), size, size, 3), np.uint8)
    errors: list[str | None] = [None] * len(rows)
    for k, row in enumerate(rows):
      record = records[int(row)]
      try:
        crop = align_lib.align_face(read_photo(paths[record.image]), record.landmarks, size)
      except (preprocess.ImageError, ValueError) as e:
        errors[k] = str(e)
        continue
      out[k] = crop[..., ::-1] if channel_order == "bgr" else crop
    return out, errors

  return read
