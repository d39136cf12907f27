"""ViT-FIQA's LMDB training set (the official `lmdb_dataset.py` layout), read-only.

The official writer (`LmdbDataset._create_database_from_image_folder`) stores one LMDB file
(`subdir=False`):

  b"0", b"1", ...   the encoded images (lossy WebP, quality 100), one key per image
  b"__keys__"       pickle of the list of image keys, in image order
  b"__labels__"     pickle of the list of int identity labels, in the same order
  b"__len__"        pickle of the image count

The three index values are pickles. They are read with an unpickler that resolves no global at
all, so only plain lists, ints and bytes come back; anything else is refused. The environment
is opened read-only with `lock=False`, no readahead: any number of threads and processes read at
once, and none of them writes. docs/data.md, "ViT-FIQA LMDB".
"""
from __future__ import annotations

import io
import os
import pickle
import threading

import numpy as np

FIX = "--config.data.root"
INDEX_KEYS = (b"__len__", b"__keys__", b"__labels__")


class LmdbError(ValueError):
  """An LMDB that is not in the ViT-FIQA layout, or whose index disagrees with itself."""


def _latin1_bytes(text, encoding="latin1"):
  # protocol-2 pickles (Python 2 compatible) build bytes as _codecs.encode(str, "latin1")
  if isinstance(text, str) and encoding in ("latin1", "latin-1"):
    return text.encode("latin1")
  raise LmdbError("refused _codecs.encode call that does not rebuild bytes")


class _PlainUnpickler(pickle.Unpickler):
  """Loads lists, tuples, ints, str and bytes only: resolving any other global is refused."""

  def find_class(self, module: str, name: str):
    if (module, name) == ("_codecs", "encode"):
      return _latin1_bytes
    raise LmdbError(f"refused to load global {module}.{name}: the ViT-FIQA LMDB index holds "
                    "only lists of ints and bytes")


def plain_loads(data: bytes, what: str) -> object:
  """Unpickles `data` without resolving any global (no code runs; no numpy, no classes)."""
  try:
    return _PlainUnpickler(io.BytesIO(data)).load()
  except LmdbError as e:
    raise LmdbError(f"{what}: {e}") from None
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError,
          AttributeError, MemoryError, RecursionError) as e:
    raise LmdbError(f"{what} is not a readable pickle: {type(e).__name__}: {e}") from None


_ENVS: dict[tuple[int, str], object] = {}     # (process, real path) → its one Environment
_ENVS_LOCK = threading.Lock()


def _open(path: str):
  """One read-only Environment per database and process (lmdb refuses a second one in the same
  process; threads share it, a forked process opens its own)."""
  import lmdb
  key = (os.getpid(), os.path.realpath(path))
  with _ENVS_LOCK:
    if key not in _ENVS:
      _ENVS[key] = lmdb.open(path, subdir=os.path.isdir(path), readonly=True, lock=False,
                             readahead=False, meminit=False, max_readers=2048,
                             max_spare_txns=64)
    return _ENVS[key]


class LmdbFaces:
  """Images (encoded bytes) and labels of a ViT-FIQA LMDB, by position; thread-safe."""

  def __init__(self, path: str):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path!r} does not exist; pass {FIX}=<the LMDB file written by "
                              "ViT-FIQA's lmdb_dataset.py (or its folder)>")
    try:
      import lmdb
    except ImportError:
      raise ImportError("reading a ViT-FIQA LMDB needs the lmdb package: pip install lmdb "
                        "(or pip install exfiqa-jax[train])") from None
    self.path = path
    try:
      self._env = _open(path)
    except lmdb.Error as e:
      raise LmdbError(f"{path} is not an LMDB database ({e}); pass {FIX}=<the .lmdb file>") \
          from None
    with self._env.begin(buffers=False) as txn:
      raw = {k: txn.get(k) for k in INDEX_KEYS}
    missing = [k.decode() for k, v in raw.items() if v is None]
    if missing:
      raise LmdbError(f"{path} has no {', '.join(missing)}: not a ViT-FIQA LMDB (its writer "
                      "puts __len__, __keys__ and __labels__ last; a database whose conversion "
                      "stopped before them holds images without labels: write it again)")
    length = plain_loads(raw[b"__len__"], f"{path} __len__")
    keys = plain_loads(raw[b"__keys__"], f"{path} __keys__")
    labels = plain_loads(raw[b"__labels__"], f"{path} __labels__")
    self.keys, self.labels = _checked(path, length, keys, labels)
    if not len(self.labels):
      raise LmdbError(f"{path} holds no image; pass {FIX}=<a non-empty ViT-FIQA LMDB>")

  def __getstate__(self):              # a worker process opens its own Environment
    return dict(self.__dict__, _env=None)

  def __setstate__(self, state):
    self.__dict__.update(state, _env=_open(state["path"]))

  def __len__(self) -> int:
    return len(self.labels)

  @property
  def num_classes(self) -> int:
    return int(self.labels.max()) + 1

  def key(self, position: int) -> bytes:
    return self.keys[position] if self.keys is not None else str(int(position)).encode("ascii")

  def image(self, position: int) -> bytes:
    """The encoded image of image `position` (WebP in the official writer)."""
    key = self.key(position)
    with self._env.begin(buffers=False) as txn:
      data = txn.get(key)
    if data is None:
      raise LmdbError(f"{self.path}: __keys__ lists {key!r} (image {position}) but the database "
                      "has no such key; the index does not belong to these images: write the "
                      "LMDB again")
    return data


def _checked(path: str, length, keys, labels) -> tuple[list[bytes] | None, np.ndarray]:
  """Type-checks the index; keys b"0".."n-1" (the official writer's) are not kept in memory."""
  if type(length) is not int:
    raise LmdbError(f"{path} __len__ is a {type(length).__name__}, not an int")
  for name, value in (("__keys__", keys), ("__labels__", labels)):
    if not isinstance(value, (list, tuple)) or len(value) != length:
      size = len(value) if isinstance(value, (list, tuple)) else type(value).__name__
      raise LmdbError(f"{path} {name} holds {size} entries but __len__ says {length}")
  if not all(type(k) is bytes for k in keys):
    raise LmdbError(f"{path} __keys__ holds entries that are not bytes")
  if not all(type(v) is int and v >= 0 for v in labels):
    raise LmdbError(f"{path} __labels__ holds entries that are not identity indices (ints >= 0)")
  plain = all(k == str(i).encode("ascii") for i, k in enumerate(keys))
  return (None if plain else list(keys)), np.asarray(labels, np.int64)
