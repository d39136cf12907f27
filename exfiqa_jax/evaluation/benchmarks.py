"""Benchmarks: the images of an evaluation in a fixed order and its comparison protocol.

A `Benchmark` comes from the TFDS builders (`open_benchmark`: .bin sets, XQLFW, Adience, IJB-C,
any registered builder) or from arrays in memory (`array_benchmark`: synthetic data, tests).
`identity` fingerprints the data: every cached stage depends on it (docs/evaluation.md).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from exfiqa_jax import files, identity
from exfiqa_jax.data import pipeline
from exfiqa_jax.data.benchmark_names import manual_dir_key

GROUP_FIELDS = ("age", "gender")   # record fields that are group labels (Adience fold files)


@dataclasses.dataclass
class Benchmark:
  """Images in a fixed order and the comparison protocol over them.

  pair_kind "image": pairs [P, 2] image rows; "template" (IJB-C): template_pairs [P, 2] raw
  template ids, template_ids / media_ids [I]. `identity` fingerprints the data (what a cached
  stage depends on); `extra` holds per-image arrays a caller may use (e.g. severity).
  `protocol`: the pixel protocol it was opened with ("published" | "lossless", docs/data.md;
  None for in-memory arrays); `groups`: per-image group labels [I] str ("" = none) by grouping
  name, e.g. Adience "age" and "gender" (per-group EDC, docs/evaluation.md).
  """
  name: str
  num_images: int
  read: Callable[[np.ndarray], tuple[np.ndarray, list[str]]]   # rows → (uint8 [k,112,112,3], names)
  pair_kind: str
  is_genuine: np.ndarray
  identity: dict[str, Any]
  pairs: np.ndarray | None = None
  template_pairs: np.ndarray | None = None
  template_ids: np.ndarray | None = None
  media_ids: np.ndarray | None = None
  extra: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  protocol: str | None = None
  groups: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
  # rows → names without decoding the images (TFDS sets: `read` decodes every image, and the
  # scoring stages ask for the names of every chunk; None: through `read`)
  read_names: Callable[[np.ndarray], list[str]] | None = None


def array_benchmark(name: str, images: np.ndarray, names: Sequence[str], pairs: np.ndarray,
                    is_genuine: np.ndarray, extra: Mapping[str, np.ndarray] | None = None
                    ) -> Benchmark:
  """An in-memory benchmark (synthetic data, tests): images uint8 [I, 112, 112, 3]."""
  images = np.asarray(images)
  names = [str(n) for n in names]
  if images.dtype != np.uint8 or images.ndim != 4 or len(images) != len(names):
    raise ValueError(f"images must be uint8 [I, H, W, 3] with one name each, got {images.dtype} "
                     f"{images.shape} and {len(names)} names")
  ident = {"kind": "arrays", "images": images, "names": names, "pairs": np.asarray(pairs),
           "is_genuine": np.asarray(is_genuine)}
  return Benchmark(name, len(images), lambda rows: (images[rows], [names[r] for r in rows]),
                   "image", np.asarray(is_genuine, bool), ident,
                   pairs=np.asarray(pairs, np.int64), extra=dict(extra or {}))


def _source_reader(source) -> Callable[[np.ndarray], tuple[np.ndarray, list[str]]]:
  def read(rows):
    records = source.__getitems__([int(r) for r in rows])
    if not records:
      return np.zeros((0, 112, 112, 3), np.uint8), []
    return np.stack([r["image"] for r in records]), [str(r["name"]) for r in records]
  return read


def _source_names(source) -> Callable[[np.ndarray], list[str]]:
  """Names of rows of a loader Source, read without decoding the images."""
  raw = copy.copy(source)
  raw.decode = False

  def names(rows):
    return [str(r["name"]) for r in raw.__getitems__([int(r) for r in rows])]
  return names


def _manual_dir(config, name: str) -> str | None:
  """The folder of `name`'s source files: config.data.manual_dirs.<name>, else
  config.data.manual_dir; an error names the one that was used."""
  per = config.data.get("manual_dirs", None)
  own = per.get(manual_dir_key(name), "") if per is not None else ""
  flag = (f"--config.data.manual_dirs.{manual_dir_key(name)}" if own
          else "--config.data.manual_dir")
  value = own or config.data.get("manual_dir", "")
  if not value:
    return None
  path = os.path.expanduser(value)
  if not os.path.isdir(path):
    what = ("is a file, not a folder" if os.path.exists(path) else "does not exist")
    raise FileNotFoundError(
        f"data folder {value} for {name} {what}; pass {flag}=<folder with the {name} files>"
        + ("" if own else f" (or --config.data.manual_dirs.{manual_dir_key(name)}=...)"))
  return path


def open_benchmark(name: str, config) -> Benchmark:
  """A benchmark from the TFDS builders (built on first use from config.data.manual_dir), with
  the pixels of `config.data.protocol` (docs/data.md, "Protocols: published and lossless")."""
  from exfiqa_jax.data import builders, protocols
  options: dict[str, Any] = {}
  if config.data.get("skip_corrupt", False):
    options["skip_corrupt"] = True
  if name == "ijbc":
    builder = "ijbc"
    if config.data.get("subset", 0):
      options["subset"] = int(config.data.subset)
  elif name in builders.REGISTRY or name in builders.ALIASES or "/" in name:
    builder = name
  else:                                   # any <name>.bin in manual_dir
    builder = f"verification_bin/{name[:-4] if name.endswith('.bin') else name}"
  protocol = protocols.check_protocol(config.data.get("protocol", "published"))
  builder_name = builders.loader.resolve(builder, {})[0].name
  image_format = (config.data.get("image_format", "") or "") if builder_name == "ijbc" else ""
  options.update(protocols.build_options(builder_name, protocol, image_format))
  if builder_name == "adience" and config.data.get("adience_folds", ""):
    options["folds"] = os.path.abspath(os.path.expanduser(config.data.adience_folds))
  data_dir = os.path.expanduser(config.data.get("data_dir", "")) or None
  source, info = builders.load(builder, _manual_dir(config, name), data_dir, decode=True,
                               channel_order=config.data.get("channel_order", "") or None,
                               **options)
  if info.pairs is None:
    raise ValueError(f"{name} ({info.name}/{info.config}) has no comparison protocol (pairs); "
                     "it cannot be evaluated with EDC")
  # What the stages depend on: the source files it was built from (a rebuild from changed
  # files changes them) and the built files themselves (size + mtime of every file).
  ident = {"kind": "tfds", "directory": info.directory, "config": info.config,
           "protocol": protocol, "options": {k: str(v) for k, v in sorted(options.items())},
           "records": info.num_records, "channel_order": info.channel_order,
           "image_ids": np.asarray(info.image_ids),
           "sources": info.metadata.get("sources_sha256"),
           "build": identity.file_identity(info.directory, digest=False)}
  gen = np.asarray(info.pairs["is_genuine"], bool)
  groups = {k: np.asarray(info.record_arrays[k], dtype=str) for k in GROUP_FIELDS
            if k in info.record_arrays}
  if info.pair_kind == "template":
    return Benchmark(name, info.num_records, _source_reader(source), "template", gen, ident,
                     template_pairs=np.stack([info.pairs["template_a"],
                                              info.pairs["template_b"]], 1),
                     template_ids=np.asarray(info.record_arrays["template_id"]),
                     media_ids=np.asarray(info.record_arrays["media_id"]),
                     protocol=protocol, groups=groups, read_names=_source_names(source))
  return Benchmark(name, info.num_records, _source_reader(source), "image", gen, ident,
                   pairs=np.stack([info.pairs["index_a"], info.pairs["index_b"]], 1),
                   protocol=protocol, groups=groups, read_names=_source_names(source))


def check_unchanged(bench: Benchmark) -> None:
  """The built data set `bench` reads is still the one identified when it was opened: a
  rebuild by another job in between would mix two data sets into one run's stages (a rerun
  recomputes them: the build's identity changed)."""
  recorded = bench.identity.get("build")
  if recorded and identity.file_identity(recorded["path"], digest=False) != recorded:
    raise RuntimeError(
        f"{bench.name}: the data set in {recorded['path']} was rebuilt by another job while "
        "this run read it; run again (what it read is recomputed), and give jobs that build "
        "from other files their own --config.data.data_dir")


def image_reader(bench: Benchmark) -> pipeline.Reader:
  """The benchmark's rows as a pipeline reader (images only; names are read once per chunk)."""
  return lambda rows: bench.read(rows)[0]


def image_names(bench: Benchmark, lo: int, hi: int) -> np.ndarray:
  """Names of rows [lo, hi) (read on every host, without decoding where the benchmark can)."""
  if hi <= lo:
    return np.asarray([], dtype=str)
  rows = np.arange(lo, hi)
  return np.asarray(bench.read_names(rows) if bench.read_names is not None
                    else bench.read(rows)[1], dtype=str)


def benchmark_names(config) -> list[str]:
  """The benchmarks of config.benchmarks, in order; one named twice (or two that are one
  output folder, files.slug) is an error naming the flag: it would be evaluated and written
  twice, the second over the first."""
  names = [b.strip() for b in str(config.benchmarks).split(",") if b.strip()]
  if not names:
    raise ValueError("no benchmark: pass e.g. "
                     "--config=configs/eval_verification.py:benchmarks=lfw+agedb_30")
  seen: dict[str, str] = {}
  for name in names:
    other = seen.setdefault(files.slug(name), name)
    if other != name or names.count(name) > 1:
      what = (f"names {name!r} twice" if other == name
              else f"names {other!r} and {name!r}, one output folder ({files.slug(name)})")
      raise ValueError(f"--config.benchmarks={config.benchmarks!r} {what}; name each "
                       "benchmark once")
  return names
