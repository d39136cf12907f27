"""insightface `.bin` pair sets (LFW, AgeDB-30, CFP-FP, CALFW, CPLFW, any `<name>.bin`).

Format (docs/evaluation.md): a pickle of `(bins, issame_list)`; `bins` holds 2P encoded images,
pair i = images 2i and 2i+1 with label issame_list[i]. The pickle is read with a restricted
unpickler: besides plain containers it accepts only what these files really contain
(bytes, bools; numpy uint8 buffers from `cv2.imencode` and numpy bools, which some
writers produce) and refuses every other global, so a hostile `.bin` cannot run code.
"""
from __future__ import annotations

import codecs
import functools
import io
import os
import pickle
import struct

import numpy as np

from exfiqa_jax.data import protocols
from exfiqa_jax.data.builders import base
from exfiqa_jax.data.builders.loader import register

LAYOUT = """\
  <manual_dir>/
    <dataset>.bin          e.g. lfw.bin, agedb_30.bin, cfp_fp.bin, calfw.bin, cplfw.bin
                           (insightface pickle of (encoded images, issame list))
  build with dataset="<dataset>" (the file name without .bin)"""

_ALLOWED_DTYPES = ("u1", "b1", "|u1", "|b1", "uint8", "bool", "?")
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMERIC_MODULES = ("numpy.core.numeric", "numpy._core.numeric")


class UnsafePickleError(pickle.UnpicklingError):
  """A `.bin` that asks the unpickler for anything but bytes, bools and their containers."""


class _NdarrayToken:
  """Stands for `numpy.ndarray` inside the pickle; only `_reconstruct` accepts it."""


def _safe_dtype(spec, align=False, copy=False):
  if isinstance(spec, bytes):  # Python 2 pickles read with encoding="bytes"
    spec = spec.decode("latin1")
  if not isinstance(spec, str) or spec not in _ALLOWED_DTYPES:
    raise UnsafePickleError(f"refused numpy dtype {spec!r}: a .bin may only hold uint8 image "
                            f"buffers and bool labels")
  return np.dtype(spec)


def _checked_dtype(dtype) -> np.dtype:
  if not isinstance(dtype, np.dtype) or dtype not in (np.dtype(np.uint8), np.dtype(bool)):
    raise UnsafePickleError(f"refused numpy data of dtype {dtype!r}")
  return dtype


def _safe_reconstruct(cls, shape, typecode):
  if cls is not _NdarrayToken:
    raise UnsafePickleError(f"refused array reconstruction of {cls!r}")
  # An empty placeholder; BUILD then calls ndarray.__setstate__ with the (checked-dtype) data.
  return _SafeArray()


class _SafeArray:
  """Receives ndarray state from the pickle stream and keeps only uint8/bool arrays. A crafted
  pickle may reconstruct one and never BUILD it: `array` stays None and is refused on use."""

  def __init__(self):
    self.array = None

  def __setstate__(self, state):
    if not (isinstance(state, tuple) and len(state) == 5):
      raise UnsafePickleError("refused malformed numpy array state")
    _, shape, dtype, fortran, raw = state
    dtype = _checked_dtype(dtype)
    if not isinstance(raw, (bytes, bytearray)):
      raise UnsafePickleError("refused numpy array whose data is not raw bytes")
    shape = tuple(int(s) for s in shape)
    self.array = np.frombuffer(bytes(raw), dtype=dtype).reshape(shape,
                                                                 order="F" if fortran else "C")


def _safe_frombuffer(buffer, dtype, shape, order):
  dtype = _checked_dtype(dtype)
  data = bytes(buffer.raw() if isinstance(buffer, pickle.PickleBuffer) else buffer)
  return np.frombuffer(data, dtype=dtype).reshape(tuple(shape), order=order)


def _safe_scalar(dtype, data=b""):
  if _checked_dtype(dtype) != np.dtype(bool) or not isinstance(data, bytes) or len(data) != 1:
    raise UnsafePickleError("refused numpy scalar that is not a bool")
  return np.bool_(data != b"\x00")


def _safe_codecs_encode(text, encoding="utf-8"):
  # Python 3 protocol-2 pickles store bytes as _codecs.encode(str, "latin1").
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise UnsafePickleError("refused _codecs.encode call that is not bytes-as-latin1")
  return codecs.encode(text, "latin1")


def _safe_bytearray(data=b"", encoding=None):
  # Protocol-2 pickles build bytearrays as bytearray(str, "latin-1").
  if isinstance(data, str) and encoding in ("latin1", "latin-1"):
    return bytearray(data, "latin1")
  if isinstance(data, (bytes, bytearray)) and encoding is None:
    return bytearray(data)
  raise UnsafePickleError("refused bytearray call that does not copy bytes")


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickler for `.bin` files: containers, bytes, bools, numpy uint8/bool data only."""

  def find_class(self, module: str, name: str):
    if module in _NUMPY_MODULES and name == "_reconstruct":
      return _safe_reconstruct
    if module in _NUMPY_MODULES and name == "scalar":
      return _safe_scalar
    if module in _NUMERIC_MODULES and name == "_frombuffer":
      return _safe_frombuffer
    if module == "numpy" and name == "ndarray":
      return _NdarrayToken
    if module == "numpy" and name == "dtype":
      return _safe_dtype
    if module in ("builtins", "__builtin__") and name == "bytearray":
      return _safe_bytearray
    if module == "_codecs" and name == "encode":
      return _safe_codecs_encode
    raise UnsafePickleError(
        f"refused to load global {module}.{name}: an insightface .bin only holds encoded image "
        f"bytes and bool labels. This file is not one (or was tampered with); do not load it.")


def _built(item: _SafeArray, what: str) -> np.ndarray:
  if item.array is None:
    raise base.DataError(f"{what} of the .bin is a numpy array whose data never follows in the "
                         "pickle (a malformed or crafted file); re-create the .bin")
  return item.array


def _as_bytes(item, k: int) -> bytes:
  if isinstance(item, _SafeArray):
    item = _built(item, f"image {k}")
  if isinstance(item, (bytes, bytearray)):
    return bytes(item)
  if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim <= 2:
    return item.tobytes()
  raise UnsafePickleError(f"image {k} of the .bin is a {type(item).__name__}, not encoded bytes")


def _as_labels(issame) -> np.ndarray:
  if isinstance(issame, _SafeArray):
    issame = _built(issame, "the issame list")
  if isinstance(issame, np.ndarray):
    if issame.dtype != bool or issame.ndim != 1:
      raise UnsafePickleError(f"issame array has dtype {issame.dtype}, shape {issame.shape}")
    return issame.copy()
  if not isinstance(issame, (list, tuple)):
    raise UnsafePickleError(f"issame list is a {type(issame).__name__}, not a list of bools")
  labels = []
  for k, v in enumerate(issame):
    if isinstance(v, (bool, np.bool_)) or (type(v) is int and v in (0, 1)):
      labels.append(bool(v))
    else:
      raise UnsafePickleError(f"issame[{k}] is {type(v).__name__} {v!r}, not a bool")
  return np.asarray(labels, dtype=bool)


def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
  """Safely reads an insightface `.bin` → (2P encoded images, is_genuine [P] bool)."""
  with open(path, "rb") as f:
    raw = f.read()
  try:
    obj = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{path}: {e}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
          KeyError, struct.error, MemoryError, RecursionError) as e:
    raise base.DataError(f"{path} is not a readable insightface .bin pickle: "
                         f"{type(e).__name__}: {e}") from e
  if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
    raise base.DataError(f"{path}: expected a pickle of (bins, issame_list), got "
                         f"{type(obj).__name__} of length {len(obj) if hasattr(obj, '__len__') else '?'}")
  bins, issame = obj
  if not isinstance(bins, (list, tuple)):
    raise base.DataError(f"{path}: bins is a {type(bins).__name__}, expected a list of bytes")
  images = [_as_bytes(item, k) for k, item in enumerate(bins)]
  labels = _as_labels(issame)
  if len(labels) == 0:
    raise base.DataError(f"{path}: the issame list is empty; nothing to evaluate")
  if len(images) != 2 * len(labels):
    raise base.DataError(f"{path}: {len(images)} images for {len(labels)} pairs; a .bin holds "
                         f"exactly 2 images per pair (pair i = images 2i, 2i+1)")
  return images, labels


@register
class VerificationBin(base.Builder):
  """Pair benchmark from `<dataset>.bin`; image_id = index in the bin, name = `%05d`."""

  name = "verification_bin"
  LAYOUT = LAYOUT
  CONFIG_KEY = "dataset"
  # image_format: "stored" = the bytes of the .bin; "jpeg" = what CR-FIQA's extract_bin.py
  # writes from them (channel-swapped quality-95 JPEG, read back "bgr"; docs/data.md, Protocols)
  OPTIONS = {"dataset": None, "image_format": "stored"}
  PAIR_KIND = "image"
  DEFAULT_CHANNEL_ORDER = "rgb"   # mx.image.imdecode gives RGB; the bytes are normal JPEGs
  DESCRIPTION = "insightface .bin verification pairs (pair i = images 2i, 2i+1)."

  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    if options.get("image_format", "stored") not in ("stored", "jpeg"):
      raise ValueError(f"verification_bin: image_format must be 'stored' (the .bin's bytes) or "
                       f"'jpeg' (as CR-FIQA's extract_bin.py re-encodes them), got "
                       f"{options['image_format']!r}")
    path = os.path.join(manual_dir, f"{options['dataset']}.bin")
    if not os.path.isfile(path):
      present = sorted(f for f in os.listdir(manual_dir) if f.endswith(".bin")) \
          if os.path.isdir(manual_dir) else []
      raise base.layout_error(cls.name, f"missing file {path} (.bin files present: "
                              f"{present or 'none'})", LAYOUT)
    return {"bin": path}

  def plan(self, paths: dict[str, str], options: dict) -> base.Plan:
    images, labels = read_bin(paths["bin"])
    script = options.get("image_format", "stored") == "jpeg"
    entries = [base.ImageEntry(k, f"{k:05d}", functools.partial(protocols.script_file, data,
                                                                f"{k:05d}") if script else data)
               for k, data in enumerate(images)]
    index = np.arange(len(labels), dtype=np.int64)
    return base.Plan(entries, pair_a=2 * index, pair_b=2 * index + 1, is_genuine=labels,
                     metadata={"dataset": options["dataset"],
                               **({"default_channel_order": protocols.SCRIPT_CHANNEL_ORDER}
                                  if script else {})})
