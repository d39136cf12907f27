"""The record store of a build: examples spilled to one file on disk, read back in key order.

TFDS's writer keeps every serialized example in memory up to 1 GB and then spills into 1000
bucket files through `tf.io.gfile`, which needs TensorFlow (not a dependency: a build over
1 GB, such as IJB-C, stopped with "No module named 'tensorflow'"). With `disable_shuffling`
its integer keys all land in the first bucket, which is then sorted in memory whole. This
store is what the writer uses instead during our builds (`in_builds`): each example is
appended to one temporary file, only (key, offset, size) stay in memory, and the examples are
read back in key order (sequentially when they came in order, as our builders write them).
Memory is O(examples × 24 bytes) whatever the data set's size.
"""
from __future__ import annotations

import array
import contextlib
import os
import uuid
from typing import Any, Iterator

from tensorflow_datasets.core import shuffle


class SpillStore:
  """The interface of `tensorflow_datasets.core.shuffle.Shuffler` for disable_shuffling."""

  def __init__(self, dirpath: Any, hash_salt: Any = None, disable_shuffling: bool = True,
               ignore_duplicates: bool = False):
    del hash_salt                                  # keys are not hashed: their order is kept
    if not disable_shuffling:
      raise ValueError("SpillStore keeps the key order; shuffled builds use TFDS's Shuffler")
    self._path = os.path.join(os.fspath(dirpath), f"spill_{uuid.uuid4().hex}.tmp")
    self._ignore_duplicates = ignore_duplicates
    self._keys = array.array("q")
    self._offsets = array.array("Q")
    self._sizes = array.array("Q")
    self._file = None
    self._total = 0
    self._read = False

  @property
  def size(self) -> int:
    return self._total

  @property
  def num_examples(self) -> int:
    return len(self._keys)

  @property
  def bucket_lengths(self) -> list[int]:
    return [len(self._keys)]

  def add(self, key: Any, data: bytes) -> None:
    if self._read:
      raise AssertionError("add() cannot be called after the examples were read")
    if not isinstance(key, int) or isinstance(key, bool):
      raise TypeError(f"a build without shuffling needs integer example keys, got {key!r}")
    if self._file is None:
      os.makedirs(os.path.dirname(self._path), exist_ok=True)
      self._file = open(self._path, "wb")        # noqa: SIM115  (closed when read back)
    self._keys.append(key)
    self._offsets.append(self._total)
    self._sizes.append(len(data))
    self._file.write(data)
    self._total += len(data)

  def __iter__(self) -> Iterator[tuple[int, bytes]]:
    self._read = True
    if self._file is None:
      return
    self._file.close()
    keys = self._keys
    in_order = all(keys[i] < keys[i + 1] for i in range(len(keys) - 1))
    order = range(len(keys)) if in_order else sorted(range(len(keys)), key=keys.__getitem__)
    previous: tuple[int, bytes] | None = None
    try:
      with open(self._path, "rb") as f:
        for i in order:
          if not in_order:
            f.seek(self._offsets[i])
          data = f.read(self._sizes[i])
          if previous is not None and previous[0] == keys[i]:
            if self._ignore_duplicates:
              continue
            raise shuffle.DuplicatedKeysError(data, previous[1])
          previous = (keys[i], data)
          yield keys[i], data
    finally:
      with contextlib.suppress(OSError):
        os.remove(self._path)


def _store(dirpath, hash_salt, disable_shuffling: bool, ignore_duplicates: bool = False):
  if disable_shuffling:
    return SpillStore(dirpath, hash_salt, disable_shuffling, ignore_duplicates)
  return _TFDS_SHUFFLER(dirpath, hash_salt, disable_shuffling, ignore_duplicates)


_TFDS_SHUFFLER = shuffle.Shuffler


@contextlib.contextmanager
def in_builds() -> Iterator[None]:
  """While inside, TFDS's writer stores unshuffled examples in a SpillStore (the writer looks
  `shuffle.Shuffler` up when it is created); shuffled builds keep TFDS's own Shuffler."""
  shuffle.Shuffler = _store
  try:
    yield
  finally:
    shuffle.Shuffler = _TFDS_SHUFFLER
