"""What a job can set for face detection, in plain Python (no JAX): configs/score.py reads its
defaults from here, tasks build the settings from their config (docs/data.md, "Raw photos:
detection and alignment").

`DetectorConfig` holds the MTCNN settings (facenet-pytorch 2.6.0's defaults: minimum face 20 px,
pyramid factor 0.709, thresholds 0.6 / 0.7 / 0.7) and the fixed list sizes of the compiled
program (detection/program.py); `PhotoSettings` adds what a job decides around it: which face
of a photo becomes a row, where the weights come from, photos per call, decode threads.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

FACE_MODES = ("primary", "largest", "probability", "all")
ALIGN_MODES = ("none", "detect")


def check_face_mode(face: str) -> str:
  if face not in FACE_MODES:
    raise ValueError(f"face must be one of {FACE_MODES}, got {face!r}")
  return face


def check_align_mode(align: str) -> str:
  if align not in ALIGN_MODES:
    raise ValueError(f"align must be one of {ALIGN_MODES} ('none': the images are aligned "
                     f"112x112 crops already; 'detect': raw photos), got {align!r}")
  return align


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
  """MTCNN settings (the reference's defaults) and the fixed list sizes per image."""
  min_face_size: float = 20.0
  factor: float = 0.709
  thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
  max_per_scale: int = 512      # P-Net cells kept per pyramid level (top-k)
  max_candidates: int = 1024    # boxes after the per-level NMS, into the cross-level NMS
  max_rnet: int = 512           # boxes into the R-Net per photo
  max_onet: int = 128           # boxes into the O-Net per photo
  max_faces: int = 32           # faces returned per photo
  rnet_share: int = 192         # R-Net crops per photo of a batch, pooled (program.pool_size)
  onet_share: int = 16          # O-Net crops per photo of a batch, pooled
  precision: str = "highest"    # conv/dense precision (models/mtcnn.py)

  def __post_init__(self):
    if not (self.min_face_size > 0 and 0 < self.factor < 1):
      raise ValueError(f"detector needs min_face_size > 0 and 0 < factor < 1, got "
                       f"{self.min_face_size}, {self.factor}")
    if len(self.thresholds) != 3:
      raise ValueError(f"detector thresholds are three numbers, got {self.thresholds}")
    caps = (self.max_per_scale, self.max_candidates, self.max_rnet, self.max_onet,
            self.max_faces, self.rnet_share, self.onet_share)
    if min(caps) < 1:
      raise ValueError(f"detector list sizes must be >= 1, got {caps}")

  @classmethod
  def from_fields(cls, **fields: Any) -> DetectorConfig:
    """A config from plain values (a job's `data.detector` settings; none = the defaults),
    naming every unknown setting instead of a TypeError."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"unknown detector setting(s) {unknown}; known: {sorted(known)}")
    if "thresholds" in fields:
      fields["thresholds"] = tuple(float(t) for t in fields["thresholds"])
    return cls(**fields)

  def to_dict(self) -> dict[str, Any]:
    """JSON-ready (thresholds as a list): what detected rows depend on (docs/caching.md)."""
    return {**dataclasses.asdict(self), "thresholds": list(self.thresholds)}


def detector_defaults() -> dict[str, Any]:
  """The reference's settings as plain values: the one source of configs' `data.detector`."""
  return dataclasses.asdict(DetectorConfig())


@dataclasses.dataclass(frozen=True)
class PhotoSettings:
  """How a job turns raw photos into rows: `face` picks the faces of a photo (FACE_MODES),
  `weights` the MTCNN weights ("" = the installed facenet-pytorch, or its .whl / a folder with
  the three .pt files), `batch_size` photos of one size per detector call, `decode_threads`
  threads decoding files."""
  detector: DetectorConfig = DetectorConfig()
  face: str = "primary"
  weights: str = ""
  batch_size: int = 16
  decode_threads: int = 4

  def __post_init__(self):
    check_face_mode(self.face)

  @classmethod
  def from_fields(cls, detector: Mapping[str, Any] | None = None, **fields: Any
                  ) -> PhotoSettings:
    """Settings from plain values (a job's config; None or absent = the default):
    `detector` the DetectorConfig fields, the others this class's."""
    given = {k: v for k, v in fields.items() if v is not None}
    for key in ("batch_size", "decode_threads"):
      if key in given:
        given[key] = int(given[key])
    return cls(DetectorConfig.from_fields(**dict(detector or {})), **given)
