"""`Detector`: the batched MTCNN program (detection/program.py) on photos of any sizes
(docs/data.md, "Raw photos: detection and alignment").

Photos are grouped by size (the only host-side logic), each group's batch is padded to a power
of two and split over this process's devices (`parallel.local_mesh`: every host detects its own
photos), and every photo gets its `Faces`, sorted by confidence.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Sequence

import jax
import numpy as np

from exfiqa_jax import parallel
from exfiqa_jax.convert import mtcnn_keys
from exfiqa_jax.detection import program
from exfiqa_jax.detection.settings import DetectorConfig


@dataclasses.dataclass
class Faces:
  """The faces of one photo, by decreasing confidence: boxes [n, 4] (x1, y1, x2, y2, pixels),
  scores [n], landmarks [n, 5, 2] (x, y); overflow: a list cap was hit (docs/data.md)."""
  boxes: np.ndarray
  scores: np.ndarray
  landmarks: np.ndarray
  overflow: bool = False
  stages: dict[str, np.ndarray] | None = None

  def __len__(self) -> int:
    return len(self.scores)


def faces_of(out: dict[str, np.ndarray], row: int, stages: bool = False) -> Faces:
  """Photo `row`'s `Faces` from the arrays of `Detector.detect_batch` (with the per-stage
  arrays in `stages` on request, for tests)."""
  valid = out["valid"][row]
  extra = None
  if stages:
    extra = {k: out[k][row] for k in out if k.startswith(("stage", "rnet", "onet"))}
  return Faces(out["boxes"][row][valid], out["scores"][row][valid],
               out["landmarks"][row][valid], bool(out["overflow"][row]), extra)


def as_rgb(photo: np.ndarray) -> np.ndarray:
  """A photo as contiguous uint8 [H, W, 3] RGB (greyscale repeated, alpha dropped)."""
  photo = np.asarray(photo)
  if photo.ndim == 2:
    photo = np.repeat(photo[..., None], 3, axis=-1)
  if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] not in (3, 4):
    raise ValueError(f"a photo must be uint8 [H, W, 3] RGB (or [H, W] greyscale), got "
                     f"{photo.dtype} {list(photo.shape)}")
  return np.ascontiguousarray(photo[..., :3])


@functools.lru_cache(maxsize=None)
def _jitted(config: DetectorConfig) -> Callable:
  """One jitted detector per configuration, shared by every Detector (compiled once per
  batch and photo size)."""
  return jax.jit(functools.partial(program.detect_batch_fn, config=config))


class Detector:
  """MTCNN with the facenet-pytorch weights, one jitted program per (batch, height, width).

  `weights`: None = the installed facenet-pytorch, or its wheel file / a folder with the
  three .pt files (convert/mtcnn_keys.py). `batch_size`: photos per call (padded to powers of
  two up to it; spread over the local devices).
  """

  def __init__(self, config: DetectorConfig | None = None,
               weights: str | os.PathLike | None = None, batch_size: int = 16):
    self.config = config or DetectorConfig()
    self.weights = os.fspath(weights) if weights else ""
    self.batch_size = max(1, int(batch_size))
    self._mesh = parallel.local_mesh()
    self._sharding = parallel.batch_sharding(self._mesh)
    self.variables = jax.device_put(mtcnn_keys.load_variables(self.weights or None),
                                    parallel.replicated(self._mesh))
    self._fn = _jitted(self.config)

  def _padded(self, n: int) -> int:
    devices = self._mesh.devices.size
    size = max(min(self.batch_size, parallel.next_pow2(n)), n)
    return -(-size // devices) * devices

  def detect_batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] RGB photos of one size → the arrays of
    `program.detect_batch_fn` (numpy)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"photos must be uint8 [B, H, W, 3] RGB, got {images.dtype} "
                       f"{list(images.shape)}")
    n = len(images)
    size = self._padded(n)
    if size > n:
      images = np.concatenate([images, np.zeros((size - n,) + images.shape[1:], np.uint8)])
    out = self._fn(self.variables, jax.device_put(images, self._sharding))
    return {k: np.asarray(v)[:n] for k, v in jax.device_get(out).items()}

  def detect(self, photos: Sequence[np.ndarray], stages: bool = False) -> list[Faces]:
    """Photos of any sizes (uint8 [H, W, 3] RGB each; greyscale [H, W] is repeated) → one
    `Faces` per photo, in order. Photos are grouped by size, `batch_size` at a time."""
    photos = [as_rgb(p) for p in photos]
    results: list[Faces | None] = [None] * len(photos)
    buckets: dict[tuple[int, int], list[int]] = {}
    for i, photo in enumerate(photos):
      buckets.setdefault(photo.shape[:2], []).append(i)
    for indices in buckets.values():
      for start in range(0, len(indices), self.batch_size):
        chunk = indices[start:start + self.batch_size]
        out = self.detect_batch(np.stack([photos[i] for i in chunk]))
        for row, i in enumerate(chunk):
          results[i] = faces_of(out, row, stages)
    return results


_DETECTORS: dict[tuple, Detector] = {}


def get_detector(config: DetectorConfig | None = None, weights: str | os.PathLike | None = None,
                 batch_size: int = 16) -> Detector:
  """A cached `Detector` (its compiled programs are reused across calls)."""
  key = (config or DetectorConfig(), os.fspath(weights) if weights else "", int(batch_size))
  if key not in _DETECTORS:
    _DETECTORS[key] = Detector(key[0], key[1] or None, key[2])
  return _DETECTORS[key]
