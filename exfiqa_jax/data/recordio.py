"""insightface's MXNet RecordIO face sets (`train.rec`, `train.idx`, `property`), without MXNet.

insightface distributes MS1MV2 (`faces_emore`), MS1MV3, Glint360K and the community re-packs of
WebFace42M as one folder:

  train.rec    records in dmlc RecordIO framing: per part, the magic word 0xced7230a, a length
               word (low 29 bits: the part's length; high 3 bits: cflag 0 = whole record,
               1/2/3 = first/middle/last part of a record that the writer split where the magic
               word occurred, 4-byte aligned, in its data), the data, zero padding to 4 bytes
  train.idx    one line per record: `<key>\\t<byte offset of its first part in train.rec>`
  property     `<number of identities>,112,112`
  *.bin        the verification pair sets (lfw.bin, cfp_fp.bin, agedb_30.bin, ...)

Each record is an image record: the header `<IfQQ` (flag, label, id, id2); flag > 0 means `flag`
float32 labels follow the header (the label is then the first of them); the rest is the JPEG.
Record 0 is the header record: when its flag > 0, its first label is N and the images are the
records [1, N) (the identity records that follow are not images); otherwise every record is an
image. Reads are positioned (`os.pread`), so any number of threads share one open file and every
host reads only its own rows. docs/data.md, "insightface RecordIO".
"""
from __future__ import annotations

import dataclasses
import logging
import os
import struct
import time

import numpy as np

MAGIC = 0xCED7230A
HEADER = struct.Struct("<IfQQ")          # IRHeader: flag, label, id, id2
_LREC = struct.Struct("<II")             # magic, length word
_LENGTH_MASK = (1 << 29) - 1
_MAGIC_BYTES = MAGIC.to_bytes(4, "little")
FIX = "--config.data.root"               # the flag that names the folder (docs/data.md)


class RecordIOError(ValueError):
  """A `.rec`/`.idx`/`property` that cannot be read as insightface RecordIO; says which file."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One unpacked image record: its header fields, label(s) and the encoded image."""
  flag: int
  label: float
  labels: tuple[float, ...]      # the float labels that follow the header when flag > 0
  id: int
  id2: int
  image: bytes


def unpack(record: bytes, where: str = "<record>") -> ImageRecord:
  """Splits a record into its IRHeader, labels and payload (mxnet.recordio.unpack's layout)."""
  if len(record) < HEADER.size:
    raise RecordIOError(f"{where}: {len(record)} bytes, shorter than the {HEADER.size}-byte "
                        "image header; not an image record")
  flag, label, id_, id2 = HEADER.unpack_from(record)
  labels: tuple[float, ...] = ()
  start = HEADER.size
  if flag > 0:
    if len(record) < start + 4 * flag:
      raise RecordIOError(f"{where}: its header announces {flag} labels but the record ends "
                          "before them")
    labels = tuple(np.frombuffer(record, "<f4", flag, start).tolist())
    start += 4 * flag
    label = labels[0]
  return ImageRecord(flag, float(label), labels, id_, id2, bytes(record[start:]))


def read_index(path: str) -> tuple[np.ndarray, np.ndarray]:
  """A `.idx` file → (keys int64 [R], byte offsets int64 [R]) in file order."""
  with open(path, "rb") as f:
    raw = f.read()
  fields = raw.split()
  try:
    table = np.asarray(fields, dtype="S24").astype(np.int64).reshape(-1, 2)
    if len(table) != sum(1 for line in raw.splitlines() if line.strip()):
      raise ValueError("not two fields a line")
  except ValueError:                 # find the line that says what is wrong
    _check_index_lines(path)
    raise RecordIOError(f"{path} is not '<key>\\t<offset>' lines; not a RecordIO index") \
        from None
  if not len(table):
    raise RecordIOError(f"{path} lists no record; re-create the index or point {FIX} at the "
                        "folder that holds the right train.idx")
  return table[:, 0].copy(), table[:, 1].copy()


def _check_index_lines(path: str) -> None:
  with open(path, encoding="ascii", errors="replace") as f:
    for number, line in enumerate(f, 1):
      fields = line.split()
      if fields and (len(fields) != 2 or not all(x.lstrip("-").isdigit() for x in fields)):
        raise RecordIOError(f"{path}, line {number}: {line.strip()[:60]!r} is not "
                            "'<key>\\t<offset>'; not a RecordIO index")


class RecordFile:
  """Random access to a RecordIO file through its index; thread-safe (positioned reads)."""

  def __init__(self, rec_path: str, idx_path: str):
    self.rec_path, self.idx_path = rec_path, idx_path
    keys, offsets = read_index(idx_path)
    self.size = os.path.getsize(rec_path)
    bad = (offsets < 0) | (offsets % 4 != 0) | (offsets + 8 > self.size)
    if bad.any():
      k = int(np.flatnonzero(bad)[0])
      raise self._mismatch(int(keys[k]), int(offsets[k]),
                           f"which is not a 4-byte aligned position inside its {self.size} bytes")
    self.keys = keys
    order = np.argsort(keys, kind="stable")
    self._sorted_keys, self._sorted_offsets = keys[order], offsets[order]
    if (np.diff(self._sorted_keys) == 0).any():
      raise RecordIOError(f"{idx_path} lists a key twice; re-create the index or point {FIX} "
                          "at a folder with a sound train.idx")
    self._fd = os.open(rec_path, os.O_RDONLY)

  def __del__(self):
    fd = getattr(self, "_fd", None)
    if fd is not None:
      os.close(fd)

  def __getstate__(self):              # a worker process opens the file for itself
    return dict(self.__dict__, _fd=None)

  def __setstate__(self, state):
    self.__dict__.update(state, _fd=os.open(state["rec_path"], os.O_RDONLY))

  def __len__(self) -> int:
    return len(self.keys)

  def _find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    at = np.minimum(np.searchsorted(self._sorted_keys, keys), len(self._sorted_keys) - 1)
    return at, self._sorted_keys[at] == keys

  def __contains__(self, key: int) -> bool:
    return bool(self._find(np.asarray([key], np.int64))[1][0])

  def offsets_of(self, keys: np.ndarray) -> np.ndarray:
    """Byte offsets int64 [n] of records `keys`; a key the index lacks is an error."""
    keys = np.asarray(keys, np.int64)
    at, found = self._find(keys)
    if not found.all():
      raise RecordIOError(f"{self.idx_path} has no record {int(keys[~found][0])}")
    return self._sorted_offsets[at]

  def offset(self, key: int) -> int:
    return int(self.offsets_of(np.asarray([key], np.int64))[0])

  def _mismatch(self, key: int, offset: int, problem: str) -> RecordIOError:
    return RecordIOError(
        f"{self.idx_path} says record {key} starts at byte {offset} of {self.rec_path}, {problem}: "
        f"this index does not belong to this .rec (or the .rec is truncated). Put the train.idx "
        f"written with this train.rec beside it, or point {FIX} at a folder whose train.rec and "
        f"train.idx belong together")

  def _pread(self, n: int, offset: int) -> bytes:
    data = os.pread(self._fd, n, offset)
    if len(data) != n:
      raise RecordIOError(f"{self.rec_path} ends at byte {self.size}, inside a record (byte "
                          f"{offset} + {n}); the file is truncated")
    return data

  def read(self, key: int) -> bytes:
    """The record `key`, its parts joined back (with the magic words the writer cut out)."""
    offset = start = self.offset(key)
    parts: list[bytes] = []
    expect = (0, 1)                      # the first part is whole (0) or begins a record (1)
    while True:
      if offset + 8 > self.size:
        raise self._mismatch(key, start, f"but the record runs past the end at byte {offset}")
      magic, word = _LREC.unpack(self._pread(8, offset))
      if magic != MAGIC:
        raise self._mismatch(key, start, f"but byte {offset} holds 0x{magic:08x}, not the "
                                         f"RecordIO magic word 0x{MAGIC:08x}")
      cflag, length = word >> 29, word & _LENGTH_MASK
      if cflag not in expect:
        raise self._mismatch(key, start, f"but the part at byte {offset} has cflag {cflag} "
                                         f"(expected {' or '.join(map(str, expect))})")
      if offset + 8 + length > self.size:
        raise self._mismatch(key, start, f"but its part at byte {offset} claims {length} bytes "
                                         f"beyond the end of the file")
      parts.append(self._pread(length, offset + 8))
      offset += 8 + ((length + 3) & ~3)
      if cflag in (0, 3):
        return _MAGIC_BYTES.join(parts)
      expect = (2, 3)

  def headers(self, keys: np.ndarray) -> np.ndarray:
    """Each record's first label, float64 [n], in a vectorised pass over the file (one page
    read per record, no image decoded). The header sits in the record's first part unless the
    writer split the record within its first 28 bytes (the magic word there): such records,
    and any that do not frame as the index says (then the error), are read one by one."""
    keys = np.asarray(keys, np.int64)
    offsets = self.offsets_of(keys)
    mapped = np.memmap(self.rec_path, np.uint8, "r")
    out = np.empty(len(keys), np.float64)
    need = 8 + HEADER.size + 4
    for lo in range(0, len(keys), 1 << 16):
      offs = offsets[lo:lo + (1 << 16)]
      inside = offs + need <= self.size
      rows = np.minimum(offs[:, None] + np.arange(need), self.size - 1)
      raw = np.ascontiguousarray(mapped[rows])
      words = raw[:, :16].view("<u4")
      magic, word, flag = words[:, 0], words[:, 1], words[:, 2]
      label = raw[:, 12:16].view("<f4")[:, 0].astype(np.float64)
      first = raw[:, 32:36].view("<f4")[:, 0].astype(np.float64)
      first_part = (word >> 29) <= 1       # a whole record, or the first part of a split one
      simple = inside & (magic == MAGIC) & first_part & ((word & _LENGTH_MASK) >= need - 8)
      out[lo:lo + len(offs)] = np.where(flag > 0, first, label)
      for j in np.flatnonzero(~simple):         # split headers, tiny records, or a mismatch
        key = int(keys[lo + j])
        out[lo + j] = unpack(self.read(key), f"{self.rec_path} record {key}").label
    del mapped
    return out


class FaceRecords:
  """An insightface RecordIO face folder: images (encoded bytes) and labels by position."""

  def __init__(self, root: str):
    self.root = root
    if not os.path.isdir(root):
      raise FileNotFoundError(f"{root!r} is not a folder; pass {FIX}=<the folder holding "
                              "train.rec, train.idx and property (insightface faces_emore)>")
    paths = {name: os.path.join(root, name) for name in ("train.rec", "train.idx")}
    for name, path in paths.items():
      if not os.path.isfile(path):
        raise FileNotFoundError(f"{root} has no {name}; an insightface RecordIO folder holds "
                                f"train.rec, train.idx and property. Pass {FIX}=<such a folder>")
    self.file = RecordFile(paths["train.rec"], paths["train.idx"])
    header = unpack(self.file.read(0), f"{paths['train.rec']} record 0") if 0 in self.file \
        else None
    if header is not None and header.flag > 0:
      end = int(header.labels[0])
      self.keys = np.arange(1, end, dtype=np.int64)
      missing = np.setdiff1d(self.keys, self.file.keys)
      if missing.size:
        raise RecordIOError(f"{paths['train.rec']}: the header record (0) says the images are "
                            f"records [1, {end}), but {paths['train.idx']} lacks {missing.size} "
                            f"of them (first: {missing[:3].tolist()}); re-create train.idx or "
                            f"point {FIX} at a complete folder")
    else:                              # no header record: every record is an image (insightface)
      self.keys = self.file.keys.copy()
    if not len(self.keys):
      raise RecordIOError(f"{paths['train.rec']} holds no image record; pass {FIX}=<a folder "
                          "with a non-empty train.rec>")
    self.property_classes = read_property(os.path.join(root, "property"))
    self._labels: np.ndarray | None = None

  def __len__(self) -> int:
    return len(self.keys)

  def record(self, position: int) -> ImageRecord:
    key = int(self.keys[position])
    return unpack(self.file.read(key), f"{self.file.rec_path} record {key}")

  def image(self, position: int) -> bytes:
    """The encoded image (JPEG) of image `position` (0-based, record key = keys[position])."""
    return self.record(position).image

  @property
  def labels(self) -> np.ndarray:
    """int64 [N] identity labels, read from every record's header once (vectorised)."""
    if self._labels is None:
      t0 = time.time()
      raw = self.file.headers(self.keys)
      labels = raw.astype(np.int64)
      bad = (raw != labels) | (labels < 0)
      if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise RecordIOError(f"{self.file.rec_path} record {int(self.keys[k])} has label "
                            f"{raw[k]!r}, not an identity index (a whole number >= 0); "
                            f"{FIX} must name a face-recognition training set")
      if self.property_classes is not None and labels.max() >= self.property_classes:
        raise RecordIOError(f"{self.file.rec_path} has label {int(labels.max())} but "
                            f"{os.path.join(self.root, 'property')} says "
                            f"{self.property_classes} identities; fix property (or remove it: "
                            "the count is then the largest label + 1)")
      logging.info("read %d labels of %s in %.1f s", len(labels), self.file.rec_path,
                   time.time() - t0)
      self._labels = labels
    return self._labels

  @property
  def num_classes(self) -> int:
    """The identity count of `property`, else the largest label + 1."""
    if self.property_classes is not None:
      return self.property_classes
    return int(self.labels.max()) + 1


def read_property(path: str) -> int | None:
  """`property` → its identity count (`<classes>,112,112`); None when the file is absent."""
  if not os.path.isfile(path):
    return None
  with open(path, encoding="ascii", errors="replace") as f:
    text = f.read().strip()
  try:
    classes = int(text.split(",")[0])
  except ValueError:
    raise RecordIOError(f"{path} reads {text[:40]!r}, not '<identities>,112,112'; fix or "
                        "remove it (the identity count is then the largest label + 1)") from None
  if classes < 1:
    raise RecordIOError(f"{path} says {classes} identities; fix or remove it (the identity "
                        "count is then the largest label + 1)")
  return classes


def verification_bins(root: str, names: tuple[str, ...] = ("lfw", "cfp_fp", "agedb_30")
                      ) -> list[str]:
  """The pair sets that ship beside train.rec (insightface's verification targets), in order."""
  return [p for p in (os.path.join(root, f"{n}.bin") for n in names) if os.path.isfile(p)]
