"""Training data: random access by step (so a resumed run draws the same rows), per process.

`ArrayData` (arrays in memory, optionally re-degraded every batch), `FolderData` (an identity
folder <root>/<identity>/<image>), `RecordData` (insightface RecordIO: train.rec/.idx/property),
`LmdbData` (ViT-FIQA's LMDB), the synthetic faces split, and the verification pair sets used for
monitoring (`ArrayPairs`, an insightface `.bin`). `host_batches` makes the batches of a run ahead
of the loop, in a thread or in Grain worker processes. docs/data.md, "Training data".
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
from typing import Callable, Iterator, Protocol

import jax
import numpy as np
from absl import logging


class TrainData(Protocol):
  """What the loop needs from a training set: random access by step (=> resumable)."""
  num_classes: int
  num_images: int

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    """This process's rows of the global batch of `step`: {"image" uint8 [b, H, W, 3],
    "label" int32 [b]}, b = global batch / process count."""


class _StepSampler:
  """Samples without replacement per epoch; the permutation of epoch e is a pure function of
  (seed, e), so the rows of every step — and hence a resumed run — are reproducible. Each
  process loads only its own slice of the global batch."""

  def __init__(self, labels: np.ndarray, global_batch: int, seed: int, num_classes: int | None,
               transform=None):
    if global_batch > len(labels):
      raise ValueError(f"batch {global_batch} is larger than the training set ({len(labels)} "
                       "images); lower --config.batch_size")
    self.labels = np.asarray(labels, np.int32)
    self.global_batch, self.seed, self.transform = global_batch, seed, transform
    self.num_classes = int(num_classes or self.labels.max() + 1)
    self.num_images = len(self.labels)
    self.steps_per_epoch = self.num_images // global_batch
    self._perm_epoch, self._perm = -1, None
    self._process: tuple[int, int] | None = None     # fixed when pickled for a worker process

  def __getstate__(self):
    """A worker process (host_batches) is not a JAX process: it gets this host's place."""
    state = dict(self.__dict__, _perm_epoch=-1, _perm=None)
    state["_process"] = self._where()
    return state

  def _where(self) -> tuple[int, int]:
    return self._process or (jax.process_index(), jax.process_count())

  def _rows(self, step: int) -> np.ndarray:
    epoch, i = divmod(step, self.steps_per_epoch)
    if epoch != self._perm_epoch:
      self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_images)
      self._perm_epoch = epoch
    rows = self._perm[i * self.global_batch:(i + 1) * self.global_batch]
    index, count = self._where()
    local = self.global_batch // count
    return rows[index * local:(index + 1) * local]

  def _load(self, rows: np.ndarray) -> np.ndarray:
    raise NotImplementedError

  def host_batch(self, step: int) -> dict[str, np.ndarray]:
    rows = self._rows(step)
    images, labels = self._load(rows), self.labels[rows]
    if self.transform is not None:
      rng = np.random.default_rng([self.seed, 1 << 20, step, self._where()[0]])
      images = self.transform(images, labels, rng)
    return {"image": np.asarray(images, np.uint8), "label": labels}


class ArrayData(_StepSampler):
  """In-memory training set (synthetic faces, small sets). `transform(images, labels, rng)`
  (optional) re-degrades clean images afresh every batch (online re-degradation); `rng` is a
  numpy Generator seeded from (seed, step)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, global_batch: int, seed: int = 0,
               num_classes: int | None = None,
               transform: Callable[[np.ndarray, np.ndarray, np.random.Generator], np.ndarray]
               | None = None):
    if len(images) != len(labels):
      raise ValueError(f"{len(images)} images but {len(labels)} labels")
    super().__init__(labels, global_batch, seed, num_classes, transform)
    self.images = images

  def _load(self, rows):
    return self.images[rows]


class _EncodedData(_StepSampler):
  """Rows stored encoded (files, RecordIO records, LMDB values), decoded per step by a thread
  pool (`threads` = 0: in the calling thread) with the one decode path of data/preprocess.py."""

  def __init__(self, labels: np.ndarray, global_batch: int, seed: int, num_classes: int | None,
               channel_order: str, threads: int):
    from exfiqa_jax.data import preprocess
    super().__init__(labels, global_batch, seed, num_classes)
    self.channel_order = preprocess.check_channel_order(channel_order)
    self._decode = preprocess.decode_image
    self.threads = threads
    self._pool = concurrent.futures.ThreadPoolExecutor(threads) if threads > 0 else None

  def __getstate__(self):
    return dict(super().__getstate__(), _pool=None)

  def __setstate__(self, state):
    self.__dict__.update(state)
    if self.threads > 0:
      self._pool = concurrent.futures.ThreadPoolExecutor(self.threads)

  def _encoded(self, row: int) -> tuple[bytes | str, str]:
    """(encoded bytes or a file path, the name an error shows) of row `row`."""
    raise NotImplementedError

  def _decoded(self, row: int) -> np.ndarray:
    data, name = self._encoded(int(row))
    return self._decode(data, self.channel_order, name=name)

  def _load(self, rows):
    return np.stack(list(self._pool.map(self._decoded, rows) if self._pool is not None
                         else map(self._decoded, rows)))


class FolderData(_EncodedData):
  """An identity folder `<root>/<identity>/**/<image>` (e.g. MS1MV2 exported to images); labels
  are the sorted identity folder names' indices. Images are decoded per step by a thread pool."""

  def __init__(self, root: str, global_batch: int, seed: int = 0, channel_order: str = "rgb",
               threads: int = 16):
    from exfiqa_jax.data import preprocess
    if not os.path.isdir(root):
      raise FileNotFoundError(f"training folder {root!r} does not exist; pass "
                              "--config.data.root=<a folder with one sub-folder of face crops "
                              "per identity>")
    identities = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    paths, labels = [], []
    for label, ident in enumerate(identities):
      files = preprocess.list_images(os.path.join(root, ident))
      paths += files
      labels += [label] * len(files)
    if not paths:
      raise ValueError(f"no images under {root!r}: expected <root>/<identity>/<image>.jpg|png; "
                       "pass --config.data.root=<such a folder>")
    super().__init__(np.asarray(labels), global_batch, seed, len(identities), channel_order,
                     threads)
    self.paths, self.identities = paths, identities

  def _encoded(self, row):
    return self.paths[row], self.paths[row]


class RecordData(_EncodedData):
  """insightface RecordIO (`<root>/train.rec`, `train.idx`, `property`; data/recordio.py):
  random access through the index, each process reading only its own rows; labels from the
  records, the class count from `property`."""

  def __init__(self, root: str, global_batch: int, seed: int = 0, channel_order: str = "rgb",
               threads: int = 16):
    from exfiqa_jax.data import recordio
    self.records = recordio.FaceRecords(root)
    super().__init__(self.records.labels, global_batch, seed, self.records.num_classes,
                     channel_order, threads)

  def _encoded(self, row):
    return self.records.image(row), f"{self.records.file.rec_path} record " \
                                    f"{int(self.records.keys[row])}"


class LmdbData(_EncodedData):
  """ViT-FIQA's LMDB (data/lmdb_faces.py), read-only and shared by every decoding thread."""

  def __init__(self, path: str, global_batch: int, seed: int = 0, channel_order: str = "rgb",
               threads: int = 16):
    from exfiqa_jax.data import lmdb_faces
    self.faces = lmdb_faces.LmdbFaces(path)
    super().__init__(self.faces.labels, global_batch, seed, self.faces.num_classes,
                     channel_order, threads)

  def _encoded(self, row):
    return self.faces.image(row), f"{self.faces.path} key {self.faces.key(row)!r}"


# ------------------------------------------------------------------------ batches of a run
def host_batches(data: TrainData, start: int, stop: int, *, workers: int = 0,
                 prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """`data.host_batch(s)` for s in [start, stop), in order, made `prefetch` steps ahead.

  workers = 0: one background thread makes them (encoded sources decode in their own thread
  pool). workers = k > 0: k Grain worker processes (`mp_prefetch`) each make whole steps, so
  decoding scales past the GIL (docs/data.md, "Input pipeline"). A step is a pure function of
  (seed, step), so the batches do not depend on `workers`, and the iterator's whole state is
  the next step — what the Orbax checkpoint holds as TrainState.step: a resumed run starts
  here at its restored step. Close the iterator (or let it end) to stop the workers.
  """
  if workers < 0 or prefetch < 1:
    raise ValueError(f"--config.data.workers must be ≥ 0 (got {workers}) and prefetch ≥ 1 "
                     f"(got {prefetch})")
  if workers:
    try:
      import grain
    except ImportError:
      raise ImportError("--config.data.workers > 0 decodes in Grain worker processes, which "
                        "needs grain: pip install grain (or exfiqa-jax[train]); or pass "
                        "--config.data.workers=0 (threads)") from None
    return _grain_batches(grain, data, start, stop, workers, prefetch)
  return _thread_batches(data, start, stop, prefetch)


def _thread_batches(data: TrainData, start: int, stop: int, prefetch: int
                    ) -> Iterator[dict[str, np.ndarray]]:
  pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="host_batches")
  pending: collections.deque = collections.deque()
  try:
    for s in range(start, stop):
      pending.append(pool.submit(data.host_batch, s))
      if len(pending) > prefetch:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def _grain_batches(grain, data: TrainData, start: int, stop: int, workers: int, prefetch: int
                   ) -> Iterator[dict[str, np.ndarray]]:
  from absl import flags
  if not flags.FLAGS.is_parsed():      # Grain reads its --grain_* flags: outside an absl app
    flags.FLAGS.mark_as_parsed()       # (tests, notebooks) they keep their defaults
  steps = grain.MapDataset.range(start, stop).map(data.host_batch)
  # One step per worker at a time: within a step, the source's own decoding threads.
  it = iter(steps.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
            .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                      per_worker_buffer_size=prefetch)))
  try:
    yield from it
  finally:
    it.close()


class PairSet(Protocol):
  """A verification pair set: images uint8 [N, H, W, 3], pairs int [P, 2], is_genuine bool [P]."""
  images: np.ndarray
  pairs: np.ndarray
  is_genuine: np.ndarray


class ArrayPairs:
  """A pair set held in memory (see PairSet)."""

  def __init__(self, images: np.ndarray, pairs: np.ndarray, is_genuine: np.ndarray):
    self.images, self.pairs = np.asarray(images, np.uint8), np.asarray(pairs, np.int64)
    self.is_genuine = np.asarray(is_genuine, bool)


def load_bin_pairs(path: str, channel_order: str = "rgb") -> ArrayPairs:
  """An insightface verification .bin (read with the restricted unpickler): pairs (2i, 2i+1)."""
  from exfiqa_jax.data import preprocess
  from exfiqa_jax.data.builders import verification_bin
  bins, issame = verification_bin.read_bin(path)
  images = np.stack([preprocess.decode_image(bytes(b), channel_order) for b in bins])
  n = len(issame)
  return ArrayPairs(images, np.stack([2 * np.arange(n), 2 * np.arange(n) + 1], 1), issame)


def synthetic_data(config) -> tuple[TrainData, PairSet]:
  """Synthetic faces: the training split stored clean and re-degraded afresh every batch (online
  re-degradation), or degraded once; the validation split's pairs for monitoring."""
  from exfiqa_jax.data import synthetic
  d = config.data
  online = bool(d.get("online_degradation", True))
  gamma = float(d.get("gamma", synthetic.GAMMA))
  clean = float(d.get("clean_fraction", synthetic.CLEAN_FRACTION))
  train = synthetic.make_split(config.seed, "train", synthetic.config_sizes(d),
                               degraded=not online, clean_fraction=clean, gamma=gamma)

  def redegrade(images, labels, rng):
    severity, kind = synthetic.sample_degradations(rng, len(images), clean)
    return synthetic.degrade(images, severity, kind, rng, gamma)

  data = ArrayData(train.images, train.label, config.batch_size, config.seed,
                   transform=redegrade if online else None)
  val = synthetic.make_split(config.seed, "val",
                             synthetic.config_sizes(d, d.get("eval_per_identity", 10)),
                             clean_fraction=clean, gamma=gamma)
  pairs, genuine = synthetic.make_pairs(val.label, config.seed)
  if d.get("num_pairs", 0) and len(pairs) > d.num_pairs:
    keep = np.sort(np.random.default_rng([config.seed, 3]).choice(len(pairs), d.num_pairs,
                                                                   replace=False))
    pairs, genuine = pairs[keep], genuine[keep]
  return data, ArrayPairs(val.images, pairs, genuine)


SOURCES = {"image_folder": FolderData, "recordio": RecordData, "lmdb": LmdbData}
KINDS = (*SOURCES, "synthetic")


def pairs_bin_path(config) -> str:
  """The monitoring pair set: eval.pairs_bin; a bare name ("agedb_30") is looked up beside a
  RecordIO training set, and with kind=recordio an empty one means the first of lfw / cfp_fp /
  agedb_30.bin that ships in data.root (none found: no monitoring)."""
  from exfiqa_jax.data import recordio
  path = config.eval.get("pairs_bin", "") or ""
  if config.data.kind != "recordio" or os.path.isfile(path):
    return path
  root = config.data.root
  if path:
    beside = os.path.join(root, path if path.endswith(".bin") else f"{path}.bin")
    return beside if os.path.isfile(beside) else path
  found = recordio.verification_bins(root) if config.eval.get("every", 0) else []
  if found:
    logging.info("monitoring on %s (beside train.rec; --config.eval.pairs_bin picks another)",
                 found[0])
  return found[0] if found else ""


def build_data(config) -> tuple[TrainData, PairSet | None]:
  """The training set and the verification pair set named by config.data / config.eval."""
  kind = config.data.kind
  if kind == "synthetic":
    return synthetic_data(config)
  if kind not in SOURCES:
    raise ValueError(f"--config.data.kind must be one of {KINDS}, got {kind!r}")
  if not config.data.get("root", ""):
    raise ValueError(f"--config.data.kind={kind} reads --config.data.root, which is not set; "
                     "pass --config.data.root=<an identity folder | an insightface RecordIO "
                     "folder (train.rec) | a ViT-FIQA LMDB file>")
  order = config.data.get("channel_order", "rgb")
  data = SOURCES[kind](config.data.root, config.batch_size, config.seed, order,
                       int(config.data.get("decode_threads", 16)))
  bin_path = pairs_bin_path(config)
  return data, load_bin_pairs(bin_path, order) if bin_path else None
