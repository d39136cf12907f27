"""The 0–100 quality scale stored beside a model (docs/evaluation.md, "Early exits and
thresholds").

Raw scores → 0–100, the scale ISO/IEC 29794-5 uses for quality values (the integer value is
round(q100); OFIQ maps its native scores with a sigmoid and rounds). One mapping per column
(exit_1..exit_L, ex_fiqa_f, ex_fiqa_fw; names from exfiqa_jax.columns), so exits become
comparable.
  * "quantile" (default): the empirical CDF of the reference scores at K quantile knots,
    piecewise linear, strictly increasing between the lowest and highest knot, clipped to 0 / 100
    outside, invertible there. q100 ≈ 100·(fraction of reference images scoring lower).
  * "logistic": q100 = 100 / (1 + exp(-(x - loc) / scale)), (loc, scale) a least-squares fit of
    the reference quantiles x_p = loc + scale·logit(p), p = 1 % .. 99 %; strictly increasing on
    the whole line, never clipped, inverse x = loc + scale·logit(q100 / 100).
Stored with a model as `quality_mapping.json` in its converted directory (`save_mapping`,
`load_mapping`, `store`); the score task then adds the columns q100_<column> to scores.csv, and
the early_exit job fits it on its calibration split. Plain NumPy: loading a model's mapping
needs nothing else. A file is checked field by field when it is read (`from_dict`): finite
numbers, strictly increasing knots and values within [0, 100], matching lengths, known kinds,
columns and fields; an error names the file and the field.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

import numpy as np
from absl import logging

from exfiqa_jax import files, identity
from exfiqa_jax.columns import EXIT_PREFIX, FUSIONS, exit_name, exit_of, q100_name

MAPPING_FILE = "quality_mapping.json"
MAPPING_FORMAT = "exfiqa_quality_mapping"
MAPPING_KINDS = ("quantile", "logistic")
MAPPING_VERSION = 1
COLUMN_FIELDS = {"quantile": ("kind", "x", "y"), "logistic": ("kind", "loc", "scale")}
DEFAULT_KNOTS = 101            # quantile mapping: knots at 0, 1, .., 100 %


@dataclasses.dataclass(frozen=True)
class ColumnMapping:
  """One column's monotone map raw → [0, 100] (see the module docstring)."""
  kind: str
  x: tuple[float, ...] = ()          # quantile: knots (raw), strictly increasing
  y: tuple[float, ...] = ()          # quantile: values at the knots, strictly increasing
  loc: float = float("nan")          # logistic
  scale: float = float("nan")

  def __call__(self, raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, np.float64)
    if self.kind == "quantile":    # one knot (constant reference): np.interp gives y[0]
      return np.interp(raw, self.x, self.y)
    with np.errstate(over="ignore"):
      return 100.0 / (1.0 + np.exp(-(raw - self.loc) / self.scale))

  def inverse(self, q100: np.ndarray) -> np.ndarray:
    """The raw score of a 0–100 value (quantile: inside the knots' range; logistic: 0 / 100
    give -inf / +inf)."""
    q = np.asarray(q100, np.float64)
    if self.kind == "quantile":
      return np.interp(q, self.y, self.x)
    with np.errstate(divide="ignore"):
      return self.loc + self.scale * (np.log(q) - np.log(100.0 - q))

  def to_dict(self) -> dict[str, Any]:
    if self.kind == "quantile":
      return {"kind": self.kind, "x": list(self.x), "y": list(self.y)}
    return {"kind": self.kind, "loc": self.loc, "scale": self.scale}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ColumnMapping":
    """Checks every field (module docstring); a ValueError says which one is wrong."""
    if not isinstance(d, Mapping):
      raise ValueError(f"must be an object, got {_shown(d)}")
    kind = d.get("kind")
    if kind not in MAPPING_KINDS:
      raise ValueError(f"kind {kind!r} is not one of {MAPPING_KINDS}")
    fields = COLUMN_FIELDS[kind]
    unknown = sorted(set(d) - set(fields), key=str)
    if unknown:
      raise ValueError(f"unknown field(s) {unknown}: a {kind} mapping has {', '.join(fields)}")
    missing = [f for f in fields if f not in d]
    if missing:
      raise ValueError(f"has no {missing[0]!r} (a {kind} mapping has {', '.join(fields)})")
    if kind == "logistic":
      scale = _number(d["scale"], "scale")
      if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
      return cls(kind, loc=_number(d["loc"], "loc"), scale=scale)
    x, y = _increasing(d["x"], "x"), _increasing(d["y"], "y")
    if len(x) != len(y):
      raise ValueError(f"{len(x)} knots x but {len(y)} values y: one value per knot")
    outside = next((i for i, v in enumerate(y) if not 0.0 <= v <= 100.0), None)
    if outside is not None:
      raise ValueError(f"y[{outside}] must be within [0, 100], got {y[outside]!r}")
    return cls(kind, x, y)


def _shown(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def _number(value: Any, what: str) -> float:
  """`value` as a float: a finite JSON number (not a bool, not text)."""
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise ValueError(f"{what} must be a number, got {_shown(value)}")
  if not math.isfinite(value):
    raise ValueError(f"{what} must be finite, got {value!r}")
  return float(value)


def _increasing(values: Any, what: str) -> tuple[float, ...]:
  """A non-empty list of finite, strictly increasing numbers, as a tuple of floats."""
  if not isinstance(values, (list, tuple)) or not values:
    raise ValueError(f"{what} must be a non-empty list of numbers, got {_shown(values)}")
  out = tuple(_number(v, f"{what}[{i}]") for i, v in enumerate(values))
  for i in range(1, len(out)):
    if not out[i] > out[i - 1]:
      raise ValueError(f"{what} must be strictly increasing: {what}[{i}] = {out[i]!r} after "
                       f"{what}[{i - 1}] = {out[i - 1]!r}")
  return out


def fit_column(raw: np.ndarray, kind: str = "quantile", knots: int = DEFAULT_KNOTS
               ) -> ColumnMapping:
  """Fits one column's mapping on reference scores (module docstring)."""
  raw = np.asarray(raw, np.float64).ravel()
  if raw.size == 0 or not np.all(np.isfinite(raw)):
    raise ValueError("reference scores must be a non-empty array of finite values")
  if kind == "quantile":
    p = np.linspace(0.0, 1.0, max(2, int(knots)))
    xq = np.quantile(raw, p)
    x, inverse = np.unique(xq, return_inverse=True)
    if x.size == 1:
      return ColumnMapping(kind, (float(x[0]),), (50.0,))
    y = 100.0 * np.bincount(inverse, weights=p) / np.bincount(inverse)   # ties → mean level
    y[0], y[-1] = 0.0, 100.0
    return ColumnMapping(kind, tuple(float(v) for v in x), tuple(float(v) for v in y))
  if kind == "logistic":
    p = np.linspace(0.01, 0.99, 99)
    xq = np.quantile(raw, p)
    z = np.log(p / (1 - p))
    scale, loc = np.polyfit(z, xq, 1)
    if not scale > 0:                     # (near-)constant scores: a unit-free fallback
      scale = max(float(np.std(raw)), abs(float(np.mean(raw))) * 1e-6, 1e-12)
      loc = float(np.median(raw))
    return ColumnMapping(kind, loc=float(loc), scale=float(scale))
  raise ValueError(f"unknown mapping kind {kind!r}; use one of {MAPPING_KINDS}")


@dataclasses.dataclass(frozen=True)
class QualityMapping:
  """Per-column 0–100 mappings of one model, plus what they were fitted on (`meta`)."""
  kind: str
  columns: dict[str, ColumnMapping]
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def apply(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{column: raw [N]} (or a score dict, see score_columns) → {q100_<column>: [N]} for every
    mapped column present, in the mapping's order. A score dict of a truncated program
    (exit=k < the depth fitted on) maps exit_1..exit_k only: its fusions fuse other exits."""
    flat = score_columns(scores) if "exit_scores" in scores else dict(scores)
    depth = self.meta.get("num_exits")
    if "exit_scores" in scores and depth and np.shape(scores["exit_scores"])[1] != depth:
      flat = {k: v for k, v in flat.items() if k.startswith(EXIT_PREFIX)}
    return {q100_name(name): m(flat[name]) for name, m in self.columns.items() if name in flat}

  def at_exits(self, score: np.ndarray, exit: np.ndarray) -> np.ndarray:
    """0–100 values of scores each taken at its own exit (a cascade's result: the image's score
    at the exit it left): exit k's map for the rows that left at k, NaN where unmapped."""
    return at_exits(self.columns, score, exit)

  def to_dict(self) -> dict[str, Any]:
    return {"format": MAPPING_FORMAT, "version": 1, "kind": self.kind, "scale": [0, 100],
            "columns": {k: v.to_dict() for k, v in self.columns.items()}, "meta": self.meta}

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "QualityMapping":
    """Checks every field a file can carry (module docstring); a ValueError names the field."""
    if not isinstance(d, Mapping):
      raise ValueError(f"not a quality mapping: a JSON {type(d).__name__}, not an object")
    if d.get("format") != MAPPING_FORMAT:
      raise ValueError(f"not a quality mapping (format {d.get('format')!r}, expected "
                       f"{MAPPING_FORMAT!r})")
    if d.get("version", MAPPING_VERSION) != MAPPING_VERSION:
      raise ValueError(f"version {d['version']!r}: this toolkit reads version {MAPPING_VERSION}")
    if "scale" in d and d["scale"] != [0, 100]:
      raise ValueError(f"scale {_shown(d['scale'])}: a mapping's scale is [0, 100]")
    kind = d.get("kind")
    if kind not in MAPPING_KINDS:
      raise ValueError(f"kind {kind!r} is not one of {MAPPING_KINDS}")
    meta = d.get("meta", {})
    if not isinstance(meta, Mapping):
      raise ValueError(f"meta must be an object, got {_shown(meta)}")
    for key in ("num_exits", "reference_images"):
      value = meta.get(key, 1)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"meta.{key} must be a whole number ≥ 1, got {_shown(value)}")
    columns = d.get("columns")
    if not isinstance(columns, Mapping) or not columns:
      raise ValueError(f"columns must be a non-empty object, got {_shown(columns)}")
    parsed = {}
    for name, column in columns.items():
      _check_name(name, meta.get("num_exits"))
      try:
        parsed[name] = ColumnMapping.from_dict(column)
      except ValueError as e:
        raise ValueError(f"column {name!r}: {e}") from None
      if parsed[name].kind != kind:
        raise ValueError(f"column {name!r}: kind {parsed[name].kind!r} differs from the file's "
                         f"kind {kind!r}")
    return cls(kind, parsed, dict(meta))


def at_exits(maps: Mapping[str, Any], score: np.ndarray, exit: np.ndarray) -> np.ndarray:
  """{exit_k: its map} applied row by row at each row's own exit (QualityMapping.at_exits)."""
  score, exit = np.asarray(score), np.asarray(exit)
  out = np.full(score.shape, np.nan, np.float64)
  for k in np.unique(exit):
    name = exit_name(int(k)) if k > 0 else ""
    if name in maps:
      out[exit == k] = maps[name](score[exit == k])
  return out


def _check_name(name: str, num_exits: int | None) -> None:
  """A column a mapping can map: exit_<k> (k ≤ meta.num_exits when recorded) or a fusion."""
  k = exit_of(name)
  if name in FUSIONS or (k is not None and k >= 1 and name == exit_name(k)):
    if k is not None and num_exits is not None and k > num_exits:
      raise ValueError(f"column {name!r}: the mapping was fitted on meta.num_exits = "
                       f"{num_exits} exits")
    return
  raise ValueError(f"column {name!r} is none a mapping can map: exit_<k>, "
                   f"{', '.join(FUSIONS)}")


def score_columns(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """A model's score dict (exit_scores [N, L], ex_fiqa_f, ex_fiqa_fw) → {exit_1..exit_L,
  ex_fiqa_f, ex_fiqa_fw: [N]}: the columns a mapping is fitted on."""
  ex = np.asarray(scores["exit_scores"])
  out = {exit_name(l + 1): ex[:, l] for l in range(ex.shape[1])}
  for k in FUSIONS:
    if k in scores:
      out[k] = np.asarray(scores[k])
  return out


def fit_mapping(reference: Mapping[str, np.ndarray], kind: str = "quantile",
                knots: int = DEFAULT_KNOTS, meta: Mapping[str, Any] | None = None
                ) -> QualityMapping:
  """One mapping per column of `reference` ({name: [N]}, or a score dict with exit_scores)."""
  if kind not in MAPPING_KINDS:
    raise ValueError(f"mapping kind must be one of {MAPPING_KINDS}, got {kind!r}")
  flat = score_columns(reference) if "exit_scores" in reference else dict(reference)
  for name in flat:
    _check_name(name, None)
  cols = {name: fit_column(v, kind, knots) for name, v in flat.items()}
  n = len(next(iter(flat.values()))) if flat else 0
  info: dict[str, Any] = {"reference_images": int(n)}
  if "exit_scores" in reference:
    info["num_exits"] = int(np.shape(reference["exit_scores"])[1])
  return QualityMapping(kind, cols, {**info, **dict(meta or {})})


def save_mapping(path: str | os.PathLike, mapping: QualityMapping) -> str:
  """Writes `mapping` to <path>/quality_mapping.json (path = a converted model directory) or to
  `path` itself when it names a .json file. Atomic."""
  path = os.fspath(path)
  target = path if path.endswith(".json") else os.path.join(path, MAPPING_FILE)
  files.write_json(target, mapping.to_dict())
  return target


def store_with_model(model_dir: str | os.PathLike, mapping: QualityMapping) -> str:
  """Writes `mapping` into a model directory unless the same one is there already (the file's
  time stamp then stays; a file that does not load is replaced, with a warning); returns its
  path."""
  target = os.path.join(os.fspath(model_dir), MAPPING_FILE)
  try:
    old = load_mapping(model_dir)
  except ValueError as e:
    logging.warning("replacing the quality mapping that does not load: %s", e)
    old = None
  if old is None or old.to_dict() != mapping.to_dict():
    logging.info("0–100 quality mapping stored with the model: %s", target)
    return save_mapping(model_dir, mapping)
  return target


def load_mapping(path: str | os.PathLike | None) -> QualityMapping | None:
  """The mapping stored with a model (<dir>/quality_mapping.json, or a .json file), or None
  when there is none (a .pt checkpoint, a directory without the file)."""
  if not path:
    return None
  path = os.path.expanduser(os.fspath(path))
  target = os.path.join(path, MAPPING_FILE) if os.path.isdir(path) else path
  if not target.endswith(".json") or not os.path.exists(target):
    return None
  try:
    with identity.open_regular(target) as f:     # a pipe or a device: named, never opened
      return QualityMapping.from_dict(json.loads(f.read().decode("utf-8")))
  except identity.SpecialFileError as e:
    raise ValueError(f"{e}: a quality mapping is a quality_mapping.json file; pass "
                     "--config.quality_mapping=<that file>, or none to score without the q100_* "
                     "columns") from None
  except ValueError as e:      # JSON, UTF-8 and field errors alike
    detail = str(e) if not isinstance(e, (json.JSONDecodeError, UnicodeDecodeError)) else \
        f"not a valid quality mapping ({e})"
    raise ValueError(f"{target}: {detail}. Fit it again (the early_exit task stores it with the "
                     "model), or pass --config.quality_mapping=none to score without the q100_* "
                     "columns.") from None


def mapping_for(model_path: str | os.PathLike | None, override: str = "") -> QualityMapping | None:
  """The mapping the score task uses: `override` = "" → the one stored with the model (if any),
  "none" → no mapping, else a quality_mapping.json (or a directory holding one), which must
  exist."""
  override = str(override or "").strip()
  if override.lower() == "none":
    return None
  if override:
    mapping = load_mapping(override)
    if mapping is None:
      raise FileNotFoundError(f"no quality mapping at {override} (pass a quality_mapping.json, "
                              "a model directory holding one, or 'none')")
    return mapping
  return load_mapping(model_path)
