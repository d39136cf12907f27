"""Input pipeline: rows of a random-access reader → fixed-shape batches sharded over all devices.

  reader = pipeline.image_reader(paths, channel_order="rgb")      # or array_reader(images)
  for batch in pipeline.global_batches(reader, len(paths), batch_size=64):
    out = model_fn(variables, batch.images)                       # uint8 [64, 112, 112, 3]
    keep = out[:batch.num_rows]                                   # after global_to_host

Every global batch covers consecutive rows [start, start + batch_size), so results come back in
input order. Each process reads only the rows its own devices hold (the same split as
`parallel.host_batch_to_global`), decodes them in a thread pool a few batches ahead of the
model, and zero-pads the last batch with a validity mask: one shape, one compilation.

A reader is `read(rows int64 [n]) -> uint8 [n, H, W, 3]` or `(images, errors)` with `errors`
a length-n sequence of `None` (row fine) or a message (row unusable: zeroed, valid False,
reported in `HostBatch.errors`). To fail instead, a reader raises; the exception reaches the
consumer at the batch holding that row.
"""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import itertools
import os
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from exfiqa_jax import parallel
from exfiqa_jax.data import preprocess

ReadResult = np.ndarray | tuple[np.ndarray, Sequence[str | None] | None]
Reader = Callable[[np.ndarray], ReadResult]

DEFAULT_WORKERS = 4
DEFAULT_PREFETCH = 2


@dataclasses.dataclass(frozen=True)
class HostBatch:
  """This process's rows of one global batch.

  start: global row of the batch's first row; num_rows: real rows in the whole global batch
  (< batch_size only for the last one); rows [b]: the global row of each local slot, -1 for
  padding; images uint8 [b, H, W, 3], zero where not valid; valid [b] bool: a real row that
  was read; errors: {global row: message} for this process's rows the reader rejected.
  """
  start: int
  num_rows: int
  rows: np.ndarray
  images: np.ndarray
  valid: np.ndarray
  errors: dict[int, str]


@dataclasses.dataclass(frozen=True)
class GlobalBatch:
  """One global batch on device: images uint8 [B, H, W, 3] and valid bool [B], both sharded
  over the batch axis of `parallel.mesh()`; `host` is what this process contributed."""
  start: int
  num_rows: int
  images: jax.Array
  valid: jax.Array
  host: HostBatch


def host_slice(batch_size: int) -> tuple[int, int]:
  """(first row, row count) of a global batch that this process feeds under
  `parallel.batch_sharding()`; `batch_size` must be a multiple of the device count."""
  local = parallel.local_batch_size(batch_size)        # raises unless devices divide it
  index = parallel.batch_sharding().addressable_devices_indices_map((batch_size,))
  spans = sorted({(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
                  for s in index.values()})
  first = spans[0][0]
  if spans[-1][1] - first != local or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
    raise ValueError(f"process {jax.process_index()} holds rows {spans} of a batch of "
                     f"{batch_size}, not one contiguous block of {local}; build the mesh with "
                     "each process's devices next to each other (jax.devices() order)")
  return first, local


def _check_read(read: Reader, rows: np.ndarray, shape: tuple[int, ...]
                ) -> tuple[np.ndarray, Sequence[str | None]]:
  out = read(rows)
  images, errors = out if isinstance(out, tuple) else (out, None)
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.shape != (len(rows),) + shape:
    raise ValueError(f"reader returned {images.dtype} {list(images.shape)} for {len(rows)} rows; "
                     f"it must return uint8 {[len(rows), *shape]} (decode and resize with "
                     "exfiqa_jax.data.preprocess.decode_image)")
  if errors is None:
    errors = [None] * len(rows)
  elif len(errors) != len(rows):
    raise ValueError(f"reader returned {len(errors)} errors for {len(rows)} rows; return one "
                     "entry per row (None for rows that read fine)")
  return images, errors


class _Deferred:
  """A future that runs its call when asked (workers=0: read in the consumer's thread)."""

  def __init__(self, fn, *args):
    self._call = functools.partial(fn, *args)

  def result(self):
    return self._call()

  def cancel(self) -> bool:
    return True


class _InlinePool:
  def submit(self, fn, *args):
    return _Deferred(fn, *args)

  def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
    pass


def host_batches(read: Reader, stop: int, batch_size: int, *, start: int = 0,
                 image_size: int = preprocess.IMAGE_SIZE, workers: int = DEFAULT_WORKERS,
                 prefetch: int = DEFAULT_PREFETCH) -> Iterator[HostBatch]:
  """This process's part of every global batch of rows [start, stop), in order.

  `batch_size` is the global batch (a multiple of the device count). Each process's part is
  split over `workers` threads and read `prefetch` batches ahead of the one being consumed;
  `workers=0` reads in the calling thread, when asked.
  """
  if not 0 <= start <= stop:
    raise ValueError(f"rows [{start}, {stop}) are not a valid range")
  if workers < 0 or prefetch < 0:
    raise ValueError(f"workers and prefetch must be >= 0, got {workers} and {prefetch}")
  first, local = host_slice(batch_size)
  shape = (image_size, image_size, 3)
  chunk = max(1, -(-local // max(workers, 1)))
  pool = (concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode")
          if workers else _InlinePool())

  def submit(batch_start):
    num_rows = min(batch_size, stop - batch_start)
    rows = np.arange(batch_start + first, max(batch_start + first,
                                              min(batch_start + first + local,
                                                  batch_start + num_rows)), dtype=np.int64)
    parts = [(i, pool.submit(_check_read, read, rows[i:i + chunk], shape))
             for i in range(0, len(rows), chunk)]
    return batch_start, num_rows, rows, parts

  starts = iter(range(start, stop, batch_size))
  pending = collections.deque(submit(s) for s in itertools.islice(starts, prefetch))
  try:
    for batch_start in starts:
      pending.append(submit(batch_start))
      yield _assemble(*pending.popleft(), local, shape)
    while pending:
      yield _assemble(*pending.popleft(), local, shape)
  finally:
    for _, _, _, parts in pending:
      for _, future in parts:
        future.cancel()
    pool.shutdown(wait=True, cancel_futures=True)


def _assemble(batch_start: int, num_rows: int, rows: np.ndarray, parts, local: int,
              shape: tuple[int, ...]) -> HostBatch:
  images = np.zeros((local,) + shape, np.uint8)
  valid = np.zeros((local,), bool)
  valid[:len(rows)] = True
  errors = {}
  for offset, future in parts:
    part, part_errors = future.result()
    images[offset:offset + len(part)] = part
    for i, error in enumerate(part_errors):
      if error is not None:
        images[offset + i] = 0
        valid[offset + i] = False
        errors[int(rows[offset + i])] = str(error)
  slots = np.full((local,), -1, np.int64)
  slots[:len(rows)] = rows
  return HostBatch(batch_start, num_rows, slots, images, valid, errors)


def to_global(batch: HostBatch) -> GlobalBatch:
  """Every process's `HostBatch` of one step → global arrays sharded over the batch axis."""
  arrays = parallel.host_batch_to_global({"images": batch.images, "valid": batch.valid})
  return GlobalBatch(batch.start, batch.num_rows, arrays["images"], arrays["valid"], batch)


def global_batches(read: Reader, stop: int, batch_size: int, **kwargs: Any
                   ) -> Iterator[GlobalBatch]:
  """`host_batches` (same arguments) placed on the mesh as global jax.Arrays."""
  for batch in host_batches(read, stop, batch_size, **kwargs):
    yield to_global(batch)


def pad_rows(images: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """[n, ...] → ([size, ...] zero-padded, valid bool [size]) for an in-memory chunk n ≤ size."""
  n = len(images)
  if n > size:
    raise ValueError(f"cannot pad {n} rows to a batch of {size}")
  valid = np.arange(size) < n
  if n == size:
    return images, valid
  return np.concatenate([images, np.zeros((size - n,) + images.shape[1:], images.dtype)]), valid


# ------------------------------------------------------------------------------------------
# Readers
# ------------------------------------------------------------------------------------------
def array_reader(images: np.ndarray) -> Reader:
  """Rows of an in-memory uint8 [N, H, W, 3] array (synthetic data, tests)."""
  images = np.asarray(images)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} "
                     f"{list(images.shape)}")
  return lambda rows: images[rows]


def image_reader(paths: Sequence[str | os.PathLike], channel_order: str = "rgb",
                 size: int = preprocess.IMAGE_SIZE, skip_errors: bool = False) -> Reader:
  """Rows of a list of image files, decoded by `preprocess.decode_image` (channel order,
  bilinear resize to `size`). An undecodable file raises `preprocess.ImageError` naming it,
  or with `skip_errors` is reported as that row's error."""
  preprocess.check_channel_order(channel_order)
  paths = list(paths)

  def read(rows):
    images = np.zeros((len(rows), size, size, 3), np.uint8)
    errors: list[str | None] = [None] * len(rows)
    for i, row in enumerate(rows):
      try:
        images[i] = preprocess.decode_image(paths[row], channel_order, size=size)
      except preprocess.ImageError as e:
        if not skip_errors:
          raise
        errors[i] = str(e)
    return images, errors

  return read
