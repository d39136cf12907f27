"""One way to build and open any data set: `load(name, manual_dir, data_dir, **options)`.

Reading goes through `tfds.data_source` (array_record random access, numpy, no TensorFlow)
with image decoding skipped, so the input pipeline decodes in its own threads with the
project's single decode path (`preprocess.decode_image`).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from exfiqa_jax import files, identity
from exfiqa_jax.data import pairs as pairs_lib
from exfiqa_jax.data import preprocess
from exfiqa_jax.data.builders import base, spill

REGISTRY: dict[str, type[base.Builder]] = {}
# Benchmark names that are a config of a builder: load("lfw", ...) == load("verification_bin",
# ..., dataset="lfw").
ALIASES = {n: ("verification_bin", n) for n in ("lfw", "agedb_30", "cfp_fp", "calfw", "cplfw",
                                                "cfp_ff", "vgg2_fp")}
_CHECK_RECORDS = 64          # records whose ids are compared with record_image_ids.npy on load


def register(cls: type[base.Builder]) -> type[base.Builder]:
  REGISTRY[cls.name] = cls
  return cls


@dataclasses.dataclass
class LoadedInfo:
  """What a consumer needs beside the records.

  pairs: pair_kind "image" → {"index_a", "index_b": record positions [P], "is_genuine" [P]};
         pair_kind "template" (IJB-C) → {"template_a", "template_b" [P], "is_genuine" [P]};
         None for data sets without a protocol.
  record_arrays: per-record id arrays in record order (e.g. IJB-C template_id, media_id,
         faceness; image_folder label), so consumers need not read every record for them.
  """
  name: str
  config: str
  directory: str
  num_records: int
  channel_order: str
  pair_kind: str | None
  pairs: dict[str, np.ndarray] | None
  image_ids: np.ndarray                  # [N] image_id of record k
  record_arrays: dict[str, np.ndarray]
  metadata: dict[str, Any]
  skipped: list[str]
  tfds_info: Any = dataclasses.field(repr=False, default=None)


class Source:
  """Random access over the records: `len(source)`, `source[k]` → dict (numpy / str / bytes).

  "image" is the stored encoded bytes, or with `decode=True` uint8 [112, 112, 3] in
  `channel_order` (through `preprocess.decode_image`). Text fields come back as str.
  """

  def __init__(self, data_source, text_fields: tuple[str, ...], decode: bool,
               channel_order: str):
    self._source = data_source
    self._text_fields = text_fields
    self.decode = decode
    self.channel_order = channel_order

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not -len(self) <= index < len(self):
      raise IndexError(f"record {index} out of range for {len(self)} records")
    return self._convert(self._source[int(index) % len(self)])

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    return [self._convert(r) for r in self._source.__getitems__([int(i) for i in indices])]

  def __iter__(self):
    for k in range(len(self)):
      yield self[k]

  def _convert(self, record: dict) -> dict[str, Any]:
    record = dict(record)
    for key in self._text_fields:
      if isinstance(record.get(key), bytes):
        record[key] = record[key].decode("utf-8")
    if self.decode:
      record["image"] = preprocess.decode_image(record["image"], self.channel_order,
                                                name=record.get("name"))
    return record


def resolve(name: str, options: dict) -> tuple[type[base.Builder], dict]:
  """"verification_bin/lfw", "lfw" or "verification_bin" + dataset="lfw" → (builder class, options)."""
  options = dict(options)
  config_value = None
  if "/" in name:
    name, config_value = name.split("/", 1)
  if name in ALIASES and name not in REGISTRY:
    name, config_value = ALIASES[name]
  if name not in REGISTRY:
    raise ValueError(f"unknown data set {name!r}; builders: {sorted(REGISTRY)}, benchmark "
                     f"names: {sorted(ALIASES)}")
  cls = REGISTRY[name]
  if config_value is not None:
    if cls.CONFIG_KEY is None:
      raise ValueError(f"{name} has no named configs; pass options instead of '{name}/...'")
    options.setdefault(cls.CONFIG_KEY, config_value)
  return cls, options


def builder_for(name: str, data_dir: str | None = None, **options) -> base.Builder:
  cls, options = resolve(name, options)
  return cls(data_dir=data_dir, config=cls.make_config(**options), file_format="array_record")


def build(name: str, manual_dir: str | os.PathLike | None, data_dir: str | os.PathLike | None
          = None, *, overwrite: bool = False, **options) -> str:
  """Builds the data set (once; later calls reuse it) and returns its directory.

  A build owns its data set's folder while it runs (files.folder_lock, waiting): a second job
  building the same set into the same data_dir waits for the first and reuses its build,
  instead of building it again or deleting the first one's live `incomplete.*` folder as left
  by a killed build. A set already built and current is opened without the lock (a read-only
  data_dir works)."""
  builder = builder_for(name, None if data_dir is None else os.fspath(data_dir), **options)
  directory = os.fspath(builder.data_path)
  if not overwrite and _reusable(builder, directory, manual_dir)[0]:
    return directory
  with files.folder_lock(os.path.dirname(os.path.normpath(directory)),
                         f"building {builder.name}/{builder.builder_config.name}",
                         "--config.data.data_dir", wait=True):
    return _build_owned(builder, directory, manual_dir, overwrite)


def _reusable(builder: base.Builder, directory: str, manual_dir: str | os.PathLike | None
              ) -> tuple[bool, str | None]:
  """(whether the built set in `directory` can be used as it is, why not: None when it is
  not built, else what changed). Built from another manual_dir is an error."""
  if not (os.path.exists(os.path.join(directory, base.INFO_FILE)) and builder.is_prepared()):
    return False, None
  meta = files.read_json(os.path.join(directory, base.INFO_FILE))
  stored = meta["manual_dir"]
  if manual_dir is not None and os.path.abspath(os.fspath(manual_dir)) != stored:
    raise ValueError(f"{directory} already holds {builder.name} built from {stored}, not "
                     f"{os.path.abspath(os.fspath(manual_dir))}. Use another data_dir, or "
                     f"overwrite=True to rebuild it.")
  changed = _changed_sources(builder, meta, directory)
  return changed is None, changed


def _build_owned(builder: base.Builder, directory: str, manual_dir: str | os.PathLike | None,
                 overwrite: bool) -> str:
  """`build` while this job owns the data set's folder: a build another job finished while
  this one waited is reused."""
  if not overwrite:
    reusable, changed = _reusable(builder, directory, manual_dir)
    if reusable:
      return directory
    if changed is not None:
      logging.warning("%s: rebuilding %s: %s", builder.name, directory, changed)
      stored = files.read_json(os.path.join(directory, base.INFO_FILE))["manual_dir"]
      overwrite, manual_dir = True, manual_dir if manual_dir is not None else stored
  if manual_dir is None and not builder.NEEDS_MANUAL_DIR:
    manual_dir = os.path.dirname(directory)       # unused by the builder; TFDS wants a folder
    os.makedirs(manual_dir, exist_ok=True)
  if manual_dir is None:
    raise base.layout_error(builder.name, f"{builder.name} is not built yet in {directory} and "
                            f"no manual_dir was given", builder.LAYOUT)
  manual_dir = os.path.abspath(os.fspath(manual_dir))
  if not os.path.isdir(manual_dir):
    raise base.layout_error(builder.name, f"manual_dir {manual_dir} does not exist",
                            builder.LAYOUT)
  builder.locate(manual_dir, dict(builder.builder_config.options))  # clear errors up front
  remove_killed_builds(directory)
  mode = (tfds.download.GenerateMode.FORCE_REDOWNLOAD if overwrite
          else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS)
  with spill.in_builds():                      # records on disk, not in memory (spill.py)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=manual_dir, download_mode=mode, try_download_gcs=False))
  return directory


def remove_killed_builds(directory: str) -> list[str]:
  """Removes what a killed build of `directory` left: TFDS builds into a sibling
  `incomplete.XXXXXX_<version>/` and renames it when done, so a killed build leaves that folder
  (at IJB-C size, gigabytes). A build restarts from the beginning. Called only by the job that
  owns the data set's folder (`build`): a live build of another job is never removed."""
  parent, version = os.path.split(os.path.normpath(directory))
  if not os.path.isdir(parent):
    return []
  removed = []
  for entry in sorted(os.listdir(parent)):
    if re.fullmatch(r"incomplete\.[A-Z0-9]{6}_" + re.escape(version), entry):
      path = os.path.join(parent, entry)
      logging.warning("removing %s, left by a killed build (%.1f MiB)", path,
                      files.folder_bytes(path) / 2**20)
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path)
  return removed


def _changed_sources(builder: base.Builder, meta: dict, directory: str) -> str | None:
  """What changed in the files a built data set was made from (None: nothing, or they cannot
  be checked because they are gone: the built set is then used as it is)."""
  if not builder.NEEDS_MANUAL_DIR:
    return None                   # rendered from its options alone (synthetic_faces)
  source_dir = meta.get("manual_dir")
  if not source_dir or not os.path.isdir(source_dir):
    logging.warning("%s: its source folder %s is gone; using the data set built in %s "
                    "without checking it", builder.name, source_dir, directory)
    return None
  recorded = meta.get("sources")
  if recorded is None:
    return "built by an older version that did not record its source files"
  options = dict(builder.builder_config.options)
  try:
    paths = builder.locate(source_dir, options)
  except base.ManualDirError as e:
    logging.warning("%s: cannot check the source files in %s (%s); using the data set built "
                    "in %s", builder.name, source_dir, str(e).splitlines()[0], directory)
    return None
  outside = (recorded.get("outside_files") or {}).get("list")
  current = base.source_identity(paths, exclude=[os.fspath(builder._data_dir_root)],
                                 outside=outside)
  diff = identity.changes(recorded, current["sources"])
  return ("its source files changed (" + identity.describe(diff) + ")") if diff else None


def load(name: str, manual_dir: str | os.PathLike | None = None,
         data_dir: str | os.PathLike | None = None, *, decode: bool = False,
         channel_order: str | None = None, overwrite: bool = False, **options
         ) -> tuple[Source, LoadedInfo]:
  """Builds if needed, then opens the data set: (Source, LoadedInfo). See the package docstring."""
  directory = build(name, manual_dir, data_dir, overwrite=overwrite, **options)
  builder = builder_for(name, None if data_dir is None else os.fspath(data_dir), **options)
  meta = files.read_json(os.path.join(directory, base.INFO_FILE))
  order = preprocess.check_channel_order(channel_order or meta["default_channel_order"])
  data_source = builder.as_data_source(split=base.SPLIT,
                                       decoders={"image": tfds.decode.SkipDecoding()})
  features = builder.info.features
  text_fields = tuple(k for k, f in features.items() if isinstance(f, tfds.features.Text))
  source = Source(data_source, text_fields, decode, order)
  image_ids, permutation = _record_image_ids(directory, data_source)
  record_arrays = {}
  for file in sorted(os.listdir(directory)):
    if file.startswith("record_") and file.endswith(".npy") and file != base.IDS_FILE:
      array = np.load(os.path.join(directory, file))
      record_arrays[file[len("record_"):-len(".npy")]] = (
          array if permutation is None else array[permutation])
  pairs = None
  stored = pairs_lib.load_pairs(directory)
  if stored is not None:
    a, b, g = stored
    if meta["pair_kind"] == "template":
      pairs = {"template_a": np.asarray(a), "template_b": np.asarray(b),
               "is_genuine": np.asarray(g)}
    else:
      position = np.full(int(image_ids.max()) + 1, -1, dtype=np.int64)
      position[image_ids] = np.arange(len(image_ids))
      index_a, index_b = position[a], position[b]
      if (index_a < 0).any() or (index_b < 0).any():
        raise base.DataError(f"{directory}: the stored pairs name images that have no record; "
                             f"the data set is damaged, rebuild it with overwrite=True")
      pairs = {"index_a": index_a, "index_b": index_b, "is_genuine": np.asarray(g)}
  skipped_path = os.path.join(directory, base.SKIPPED_FILE)
  skipped = []
  if os.path.exists(skipped_path):
    with open(skipped_path, encoding="utf-8") as f:
      skipped = [line.split("\t", 1)[0] for line in f if line.strip()]
  info = LoadedInfo(name=builder.name, config=builder.builder_config.name, directory=directory,
                    num_records=len(source), channel_order=order, pair_kind=meta["pair_kind"],
                    pairs=pairs, image_ids=image_ids, record_arrays=record_arrays,
                    metadata=meta, skipped=skipped, tfds_info=builder.info)
  return source, info


def _record_image_ids(directory: str, data_source) -> tuple[np.ndarray, np.ndarray | None]:
  """image_id of every record, and the permutation from written order to record order.

  Records are written in plan order (disable_shuffling), and the ids written beside them say
  which; a sample of records is checked against that (every record for small sets). If the
  order ever differs, the ids are re-read from every record (slow, but still correct).
  """
  written = np.load(os.path.join(directory, base.IDS_FILE))
  n = len(data_source)
  if n != len(written):
    raise base.DataError(f"{directory}: {n} records but {len(written)} ids in {base.IDS_FILE}; "
                         f"the data set is damaged, rebuild it with overwrite=True")
  check = (np.arange(n) if n <= 4 * _CHECK_RECORDS
           else np.unique(np.linspace(0, n - 1, _CHECK_RECORDS).astype(np.int64)))
  records = data_source.__getitems__([int(k) for k in check])
  if all(int(r["image_id"]) == int(written[k]) for r, k in zip(records, check)):
    return written, None
  scanned = np.array([int(data_source[k]["image_id"]) for k in range(n)], dtype=np.int64)
  index_of = {int(v): k for k, v in enumerate(written)}
  return scanned, np.array([index_of[int(v)] for v in scanned], dtype=np.int64)
