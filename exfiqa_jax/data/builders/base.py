"""What every builder shares: manual-dir checks, image validation, records, build and load.

A builder subclass declares its manual-dir `LAYOUT`, its build `OPTIONS` (defaults), extra
record `FEATURES`, and implements `locate(manual_dir)` (check the layout, return resolved
paths) and `plan(paths, options)` (list the images, read and validate the pairs). The base
turns that into TFDS array_record records (TFDS `GeneratorBasedBuilder`, no TensorFlow) and,
next to them in the dataset directory:
  exfiqa_info.json        manual_dir, options, counts, skipped images, and the identity of
                          every source file (exfiqa_jax/identity.py): when they change, the next
                          load rebuilds the data set (loader.build) and every cached stage
                          that read it recomputes (Benchmark.identity)
  record_image_ids.npy    [N] image_id of record k (records are written in plan order)
  pairs_{a,b,is_genuine}.npy  the pair list (image ids, or template ids for IJB-C)
  skipped_images.txt      images left out with `skip_corrupt=True` (name and reason)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import inspect
import io
import json
import logging
import os
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image, UnidentifiedImageError

from exfiqa_jax import files, identity
from exfiqa_jax.data import pairs as pairs_lib
from exfiqa_jax.data import preprocess

SPLIT = "test"
INFO_FILE = "exfiqa_info.json"
IDS_FILE = "record_image_ids.npy"
SKIPPED_FILE = "skipped_images.txt"
NO_FACE_FILE = "no_face.txt"      # align=detect builders: photos without a face (left out)
FORMAT_VERSION = 2    # 2: records the identity of its source files


class ManualDirError(FileNotFoundError):
  """The manual_dir is missing or does not hold the expected files; the message shows the layout."""


class DataError(ValueError):
  """Inputs that are present but wrong: corrupt images, unknown pair names, mismatched meta files."""


@dataclasses.dataclass
class ImageEntry:
  """One image to write: where its bytes come from plus the record's own id fields."""
  image_id: int
  name: str
  source: str | bytes | Callable[[], bytes]  # a file path, encoded bytes, or a producer
  fields: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Plan:
  """A builder's validated view of its manual_dir, before any record is written."""
  images: list[ImageEntry]
  pair_a: np.ndarray | None = None        # [P] image ids (or template ids, pair_kind "template")
  pair_b: np.ndarray | None = None
  is_genuine: np.ndarray | None = None
  record_arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [N] each,
  # aligned with `images`; written as record_<key>.npy in record order
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(eq=False)
class ExfiqaConfig(tfds.core.BuilderConfig):
  """A TFDS builder config carrying the build options (they decide what is written)."""
  options: dict = dataclasses.field(default_factory=dict)


def layout_error(builder: str, problem: str, layout: str) -> ManualDirError:
  return ManualDirError(f"{builder}: {problem}\nExpected layout under manual_dir:\n"
                        f"{layout.rstrip()}\nPoint manual_dir (config.data.manual_dir) at that "
                        f"folder.")


def require_file(builder: str, path: str, layout: str) -> str:
  if not os.path.isfile(path):
    raise layout_error(builder, f"missing file {path}", layout)
  return path


def require_dir(builder: str, path: str, layout: str) -> str:
  if not os.path.isdir(path):
    raise layout_error(builder, f"missing folder {path}", layout)
  return path


def encode_png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
  return buffer.getvalue()


def validated_image_bytes(data: bytes, name: str) -> bytes:
  """Fully decodes `data`; returns it unchanged if it is an RGB JPEG/PNG, else as RGB PNG.

  Corrupt or truncated files raise `preprocess.ImageError` naming the image, at build time
  rather than in the middle of an evaluation.
  """
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()
      if image.format in ("JPEG", "PNG") and image.mode == "RGB":
        return data
      return encode_png(np.asarray(preprocess.upright_rgb(image, name)))   # 16-bit scaled; EXIF
  except preprocess.ImageError:
    raise
  except Image.DecompressionBombError as e:
    raise preprocess.ImageError(f"corrupt or unreadable image {name}: its header claims too "
                                f"many pixels for a face crop ({e})") from e
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
    raise preprocess.ImageError(f"corrupt or unreadable image {name}: {e}") from e
  except Exception as e:  # noqa: BLE001  PIL plugins raise assorted types for broken files
    raise preprocess.ImageError(f"corrupt or unreadable image {name}: "
                                f"{type(e).__name__}: {e}") from e


class Builder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of every exfiqa builder (manual download, array_record, ids in every record)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  LAYOUT: ClassVar[str] = ""
  OPTIONS: ClassVar[dict[str, Any]] = {}   # build options and defaults (beyond skip_corrupt)
  CONFIG_KEY: ClassVar[str | None] = None  # option naming the config (e.g. "dataset")
  FEATURES: ClassVar[dict[str, Any]] = {}  # extra record fields (id fields)
  PAIR_KIND: ClassVar[str | None] = None   # "image" | "template" | None
  DEFAULT_CHANNEL_ORDER: ClassVar[str] = "rgb"
  DESCRIPTION: ClassVar[str] = ""
  NEEDS_MANUAL_DIR: ClassVar[bool] = True  # False: rendered from the options (synthetic_faces)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS 4.9.10 resolves this through `importlib_resources` (not installed on Python >= 3.9)
    # for builders living in a package; the module file is all it needs.
    return epath.Path(inspect.getfile(cls))

  @property
  def MANUAL_DOWNLOAD_INSTRUCTIONS(self) -> str:  # noqa: N802  (TFDS attribute name)
    return self.LAYOUT

  # --- what subclasses implement ------------------------------------------------------------
  @classmethod
  def locate(cls, manual_dir: str, options: dict) -> dict[str, str]:
    """Checks the manual_dir layout; returns the resolved paths. Raises ManualDirError."""
    raise NotImplementedError

  def plan(self, paths: dict[str, str], options: dict) -> Plan:
    raise NotImplementedError

  # --- options and configs ------------------------------------------------------------------
  @classmethod
  def all_options(cls) -> dict[str, Any]:
    return {"skip_corrupt": False, **cls.OPTIONS}

  @classmethod
  def make_config(cls, **options) -> ExfiqaConfig:
    """Validates options and names the config so that different options never share a folder."""
    defaults = cls.all_options()
    unknown = sorted(set(options) - set(defaults))
    if unknown:
      raise ValueError(f"{cls.name}: unknown option(s) {unknown}; valid options: "
                       f"{sorted(defaults)} (plus load options decode, channel_order)")
    merged = {**defaults, **options}
    if cls.CONFIG_KEY is not None:
      key_value = merged.get(cls.CONFIG_KEY)
      if not key_value:
        raise ValueError(f"{cls.name}: option {cls.CONFIG_KEY}=... is required (e.g. "
                         f"{cls.CONFIG_KEY}='lfw')")
      base = _sanitize(str(key_value))
    else:
      base = "default"
    changed = {k: v for k, v in merged.items() if k != cls.CONFIG_KEY and v != defaults[k]}
    if changed:
      digest = hashlib.sha1(json.dumps(changed, sort_keys=True, default=str).encode())
      base = f"{base}-{digest.hexdigest()[:10]}"
    return ExfiqaConfig(name=base, options=merged, description=json.dumps(changed, default=str))

  # --- TFDS hooks ---------------------------------------------------------------------------
  def _info(self) -> tfds.core.DatasetInfo:
    features = {
        "image": tfds.features.Image(shape=(None, None, 3)),
        "name": tfds.features.Text(),
        "image_id": tfds.features.Scalar(np.int64),
        **{k: v() if callable(v) and not isinstance(v, tfds.features.FeatureConnector) else v
           for k, v in self.FEATURES.items()},
    }
    return tfds.core.DatasetInfo(builder=self, description=self.DESCRIPTION,
                                 features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.path.abspath(os.fspath(dl_manager.manual_dir))
    options = dict(self.builder_config.options)
    paths = self.locate(manual_dir, options)
    plan = self.plan(paths, options)
    self._sources = source_identity(paths, plan, exclude=[os.fspath(self._data_dir_root)])
    if not plan.images:
      raise DataError(f"{self.name}: the data set under {manual_dir} has no images; an empty "
                      f"data set cannot be evaluated. Check --config.data.manual_dir and the "
                      f"list files.")
    return {SPLIT: self._generate_examples(plan, manual_dir, options)}

  def _generate_examples(self, plan: Plan, manual_dir: str, options: dict
                         ) -> Iterator[tuple[int, dict]]:
    skipped: list[tuple[str, str]] = []
    written: list[int] = []
    no_face: list[str] = []
    for position, entry, data in prepared_images(plan.images):
      if isinstance(data, Exception):
        if getattr(data, "no_face", False):   # detection/folder.py: listed, pairs dropped
          no_face.append(entry.name)
        elif not options["skip_corrupt"]:
          raise preprocess.ImageError(
              f"{self.name}: {data}. Fix or remove the file, or pass "
              f"--config.data.skip_corrupt=True (skip_corrupt=True to builders.load) to leave "
              f"it out (it is then listed in {SKIPPED_FILE}).") from data
        logging.warning("skipping %s: %s", entry.name, data)
        skipped.append((entry.name, str(data).replace("\n", " ")))
        continue
      written.append(position)
      yield entry.image_id, {"image": data, "name": entry.name, "image_id": entry.image_id,
                             **entry.fields}
    if not written:
      raise DataError(f"{self.name}: every image under {manual_dir} was skipped as corrupt; "
                      f"nothing to build")
    self._write_side_files(plan, manual_dir, options, np.asarray(written, np.int64), skipped,
                           no_face)

  def _write_side_files(self, plan: Plan, manual_dir: str, options: dict, positions: np.ndarray,
                        skipped: list[tuple[str, str]], no_face: list[str]) -> None:
    directory = os.fspath(self.data_path)
    all_ids = np.array([e.image_id for e in plan.images], dtype=np.int64)
    written = all_ids[positions]
    files.save_npy(os.path.join(directory, IDS_FILE), written)
    for key, array in plan.record_arrays.items():
      files.save_npy(os.path.join(directory, f"record_{key}.npy"), np.asarray(array)[positions])
    dropped_pairs = 0
    if plan.pair_a is not None:
      a, b, g = plan.pair_a, plan.pair_b, plan.is_genuine
      if skipped:
        if self.PAIR_KIND == "template":  # a template survives while it keeps one image
          remaining = np.asarray(plan.record_arrays["template_id"])[positions]
          keep = np.isin(a, remaining) & np.isin(b, remaining)
        else:
          keep = np.isin(a, written) & np.isin(b, written)
        dropped_pairs = int((~keep).sum())
        a, b, g = a[keep], b[keep], g[keep]
        if dropped_pairs:
          logging.warning("%s: %d pairs dropped because they use skipped images", self.name,
                          dropped_pairs)
      try:
        pairs_lib.save_pairs(directory, a, b, g)
      except pairs_lib.PairError as e:
        raise DataError(f"{self.name}: {e}") from e
    if skipped:
      files.write_text(os.path.join(directory, SKIPPED_FILE),
                      "".join(f"{n}\t{why}\n" for n, why in skipped))
    if no_face:
      files.write_text(os.path.join(directory, NO_FACE_FILE),
                       "".join(f"{n}\n" for n in no_face))
    info = {
        "format_version": FORMAT_VERSION,
        **self._sources,
        "builder": self.name,
        "config": self.builder_config.name,
        "manual_dir": manual_dir,
        "options": options,
        "num_images": int(len(written)),
        "num_skipped": len(skipped),
        "num_pairs": None if plan.pair_a is None else int(len(plan.pair_a)) - dropped_pairs,
        "num_pairs_dropped": dropped_pairs,
        "pair_kind": self.PAIR_KIND if plan.pair_a is not None else None,
        "default_channel_order": self.DEFAULT_CHANNEL_ORDER,
        **plan.metadata,
    }
    files.write_json(os.path.join(directory, INFO_FILE), info)


def _under(path: str, folders: list[str]) -> bool:
  path = os.path.abspath(path)
  return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)


def source_identity(paths: dict[str, Any], plan: Plan | None = None,
                    exclude: list[str] | None = None, outside: list[str] | None = None
                    ) -> dict[str, Any]:
  """{"sources": identity of every located path (folders recursively, `exclude` left out) and
  of the plan's image files outside them, "sources_sha256": one digest of that}."""
  exclude = list(exclude or [])
  located = {k: os.path.abspath(os.fspath(v)) for k, v in sorted(paths.items())
             if isinstance(v, (str, os.PathLike)) and os.path.exists(v)}
  sources = {k: identity.file_identity(v, exclude=exclude) for k, v in located.items()}
  if outside is None and plan is not None:
    folders = [v for v in located.values() if os.path.isdir(v)]
    outside = sorted({os.path.abspath(e.source) for e in plan.images
                      if isinstance(e.source, str) and not _under(e.source, folders)
                      and not any(e.source == v for v in located.values())})
  if outside:
    sources["outside_files"] = {"list": list(outside),
                                **identity.files_identity(outside, digest=False)}
  digest = hashlib.sha256(json.dumps(identity.canonical(sources), sort_keys=True).encode())
  return {"sources": sources, "sources_sha256": digest.hexdigest()}


def prepare_image(entry: ImageEntry) -> bytes | Exception:
  """One entry's validated image bytes, or the error that says why it cannot be used (returned,
  so that a build can skip or report it)."""
  try:
    return validated_image_bytes(_read_source(entry.source, entry.name), entry.name)
  except (preprocess.ImageError, OSError) as e:
    return e
  except (Image.DecompressionBombError, SyntaxError, EOFError) as e:   # from a producer's PIL
    return preprocess.ImageError(f"corrupt or unreadable image {entry.name}: {e}")


def prepared_images(images: list[ImageEntry], chunk: int = 256
                     ) -> Iterator[tuple[int, ImageEntry, bytes | Exception]]:
  """Reads, aligns and validates images in a few threads (PIL releases the GIL), in order."""
  workers = min(4, os.cpu_count() or 1)
  if workers == 1 or len(images) <= chunk:
    for position, entry in enumerate(images):
      yield position, entry, prepare_image(entry)
    return
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = None
    for start in range(0, len(images), chunk):
      batch = images[start:start + chunk]
      current = (start, batch, pool.map(prepare_image, batch))
      if pending is not None:     # keep one chunk in flight while the previous one is written
        first, done, results = pending
        yield from ((first + k, e, d) for k, (e, d) in enumerate(zip(done, results)))
      pending = current
    first, done, results = pending
    yield from ((first + k, e, d) for k, (e, d) in enumerate(zip(done, results)))


def _read_source(source: str | bytes | Callable[[], bytes], name: str) -> bytes:
  if isinstance(source, (bytes, bytearray)):
    return bytes(source)
  if callable(source):
    return source()
  try:
    with identity.open_regular(source) as f:   # a pipe or a device: refused, never opened
      return f.read()
  except FileNotFoundError as e:
    raise preprocess.ImageError(f"image {name} is missing: {source} does not exist") from e


def _sanitize(text: str) -> str:
  cleaned = "".join(c if c.isalnum() or c in "_.-" else "_" for c in text)
  return cleaned.strip("._-") or "default"
