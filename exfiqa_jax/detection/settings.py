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
import numbers
from typing import Any, Mapping

FACE_MODES = ("primary", "largest", "probability", "all")
ALIGN_MODES = ("none", "detect")
# What a job config calls each setting (configs/score.py): the errors of the `from_fields`
# constructors, which read a job's config, name these flags; the dataclasses name their fields.
CONFIG_FLAGS = {"face": "--config.data.face", "weights": "--config.data.detector_weights",
                "batch_size": "--config.data.detect_batch_size",
                "decode_threads": "--config.data.decode_threads",
                "detector": "--config.data.detector"}


class SettingsError(ValueError):
  """Invalid settings: `problems` holds (name, value, what it must be) for each, named as set."""

  def __init__(self, problems: list[tuple[str, Any, str]]):
    self.problems = problems
    super().__init__("; ".join(f"{name}={value!r}: {must}" for name, value, must in problems))

  def renamed(self, names: Mapping[str, str]) -> SettingsError:
    """The same problems named as `names` spells them (a field's flag in a job config)."""
    return SettingsError([(names.get(n, n), v, m) for n, v, m in self.problems])


def check_face_mode(face: str, flag: str = "face") -> str:
  """`face` if it is one of FACE_MODES; else a SettingsError naming `flag`."""
  if face not in FACE_MODES:
    raise SettingsError([(flag, face, f"must be one of {FACE_MODES}")])
  return face


def check_align_mode(align: str, flag: str = "align") -> str:
  """`align` if it is one of ALIGN_MODES; else a SettingsError naming `flag`."""
  if align not in ALIGN_MODES:
    raise SettingsError([(flag, align, f"must be one of {ALIGN_MODES} ('none': the images are "
                                       "aligned 112x112 crops already; 'detect': raw photos)")])
  return align


def _whole(value: Any, low: int) -> bool:
  return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= low


def _real(value: Any) -> bool:
  return not isinstance(value, bool) and isinstance(value, numbers.Real)


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
    problems = []
    if not _real(self.min_face_size) or not self.min_face_size > 0:
      problems.append(("min_face_size", self.min_face_size, "must be > 0 (pixels)"))
    if not _real(self.factor) or not 0 < self.factor < 1:
      problems.append(("factor", self.factor, "must be in (0, 1): the pyramid's scale step"))
    if len(self.thresholds) != 3 or not all(_real(t) and 0 <= t <= 1
                                            for t in self.thresholds):
      problems.append(("thresholds", self.thresholds, "must be three probabilities in [0, 1] "
                       "(P-Net, R-Net, O-Net)"))
    for name in ("max_per_scale", "max_candidates", "max_rnet", "max_onet", "max_faces",
                 "rnet_share", "onet_share"):
      if not _whole(getattr(self, name), 1):
        problems.append((name, getattr(self, name), "must be a whole number >= 1"))
    if problems:
      raise SettingsError(problems)

  @classmethod
  def from_fields(cls, flag: str = "detector", **fields: Any) -> DetectorConfig:
    """A config from plain values (a job's `data.detector` settings; none = the defaults);
    errors name each setting `<flag>.<name>` (unknown ones too, instead of a TypeError)."""
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(fields) - set(known))
    if unknown:
      raise SettingsError([(f"{flag}.{name}", fields[name], f"is no detector setting; known: "
                            f"{known}") for name in unknown])
    try:
      if "thresholds" in fields:
        fields["thresholds"] = tuple(float(t) for t in fields["thresholds"])
      return cls(**fields)
    except SettingsError as e:
      raise e.renamed({name: f"{flag}.{name}" for name in known}) from None
    except (TypeError, ValueError) as e:
      raise SettingsError([(f"{flag}.thresholds", fields.get("thresholds"),
                            f"must be three numbers ({e})")]) from None

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
    problems = []
    if self.face not in FACE_MODES:
      problems.append(("face", self.face, f"must be one of {FACE_MODES}"))
    if not isinstance(self.weights, str):
      problems.append(("weights", self.weights, "must be a path (or \"\")"))
    if not _whole(self.batch_size, 1):
      problems.append(("batch_size", self.batch_size, "must be a whole number >= 1"))
    if not _whole(self.decode_threads, 0):
      problems.append(("decode_threads", self.decode_threads,
                       "must be a whole number >= 0 (0: decode in the calling thread)"))
    if problems:
      raise SettingsError(problems)

  @classmethod
  def from_fields(cls, detector: Mapping[str, Any] | None = None, **fields: Any
                  ) -> PhotoSettings:
    """Settings from a job's config values (None or absent = the default): `detector` the
    DetectorConfig fields, the others this class's; errors name the job's flags
    (CONFIG_FLAGS)."""
    given = {k: v for k, v in fields.items() if v is not None}
    detector_config = DetectorConfig.from_fields(CONFIG_FLAGS["detector"], **dict(detector or {}))
    try:
      return cls(detector_config, **given)
    except SettingsError as e:
      raise e.renamed(CONFIG_FLAGS) from None

  @classmethod
  def from_config(cls, data: Mapping[str, Any]) -> PhotoSettings:
    """Settings from a job config's `data` block (configs/score.py: the keys of CONFIG_FLAGS;
    an absent key = the default)."""
    return cls.from_fields(**{field: data.get(flag.rsplit(".", 1)[1])
                              for field, flag in CONFIG_FLAGS.items()})
