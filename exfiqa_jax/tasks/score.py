"""Task "score": every image of a folder or list file → scores at every exit (configs/score.py).

Writes into `config.output` (process 0, atomically; docs/evaluation.md, "scores.csv"):
scores.csv (image, exit_1..exit_L, ex_fiqa_f, ex_fiqa_fw, attn_1..attn_L in input order; then
q100_* when the model has a 0–100 mapping, config.quality_mapping), scores.npz (the same
arrays and the inputs), skipped.txt (skip_unreadable=True). With data.align="detect" the inputs
are raw photos: a row per detected, aligned face with its detection columns, no_face.txt
(docs/data.md, "Raw photos: detection and alignment"). With exit=k every L is k. A quality
method (quality_model.method, or `method:path`; docs/methods.md, Baselines) writes its own
columns instead (crfiqa, serfiq, grafiqs_image.., vitnt..; exfiqa_jax/columns.py). Batches are
decoded ahead in threads, padded to one shape and sharded over all devices; a finished run with
the same inputs (docs/caching.md) is not recomputed.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from exfiqa_jax import checkpoints, files, identity, inference, parallel, quality_mapping
from exfiqa_jax.convert import strict
from exfiqa_jax.data import pipeline, preprocess
from exfiqa_jax.detection import rows as detection_rows
from exfiqa_jax.detection import settings as detection_settings
from exfiqa_jax.methods import registry
from exfiqa_jax.report import score as score_report

FORMAT = 3   # 3: "" no longer means only the ViT-FIQA pass (an FR ViT adds ViTNT columns)
METHOD_FLAG = "--config.quality_model.method="


def _identity(config, path, method, paths, names, channel_order, exit: int,
              dtype: str = "float32") -> dict[str, Any]:
  """What the scores are made from (docs/caching.md): any change recomputes them."""
  asked = registry.identity(method, registry.config_options(config.quality_model))
  return {"format": FORMAT,
          "checkpoint": checkpoints.checkpoint_identity(path),
          "num_heads": config.quality_model.num_heads,
          "family": config.quality_model.family or "", "channel_order": channel_order,
          "exit": exit, "skip_unreadable": bool(config.skip_unreadable),
          "names": identity.names_identity(names), "images": identity.files_identity(paths),
          **({"compute_dtype": dtype} if dtype != "float32" else {}),   # float32 stamps stay valid
          **asked}                              # {} for the ViT-FIQA pass: old stamps stay valid


def _unreadable(error: str) -> preprocess.ImageError:
  return preprocess.ImageError(
      f"{error}\nFix or remove the file, or pass --config.skip_unreadable=True to skip "
      "unreadable images (listed in skipped.txt)")


@contextlib.contextmanager
def _naming_flag(flag: str):
  """A special file (a named pipe, a device) where a file is needed: the error names the flag."""
  try:
    yield
  except identity.SpecialFileError as e:
    raise identity.SpecialFileError(f"{e}; pass {flag}") from None


def _check_inputs(config, path: str) -> tuple[str, list[str], list[str]]:
  """(channel order, image paths, names): every input problem before any work."""
  if not path or not config.images:
    raise ValueError("pass --config.quality_model.path=<converted dir or .pt> and "
                     "--config.images=<image folder or list file>")
  channel_order = preprocess.check_channel_order(config.data.channel_order)
  with _naming_flag("--config.images=<image folder or list file>"):   # a pipe, a device
    paths, names = preprocess.read_image_list(config.images, config.image_root or None)
  if not paths:
    raise ValueError(f"no images in {config.images}: a folder needs image files "
                     f"({', '.join(preprocess.IMAGE_EXTENSIONS)}) somewhere below it, a list "
                     "file one path per line")
  if int(config.batch_size) < 1:
    raise ValueError(f"--config.batch_size must be at least 1, got {config.batch_size}")
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path} does not exist; pass "
                            "--config.quality_model.path=<converted dir or .pt>")
  if not os.path.isdir(path):
    with _naming_flag("--config.quality_model.path=<converted dir or .pt>"):
      identity.regular_stat(path)            # a pipe or a device is never opened
  if parallel.is_writer():
    files.check_output_dir(config.output)    # before any compute
  return channel_order, paths, names


def _photo_settings(data) -> detection_settings.PhotoSettings:
  """config.data's detection keys (configs/score.py) as plain settings for detection/."""
  return detection_settings.PhotoSettings.from_config(data)


def _detect_photos(config, photo_settings, paths, names, channel_order, image_size: int):
  """Raw photos → the detected faces to score (detection/rows.py; docs/data.md)."""
  with tqdm(total=len(paths), unit="photo", desc="detect", smoothing=0.1,
            disable=not (parallel.is_writer() and config.get("progress", True))) as bar:
    photos = detection_rows.photo_rows(paths, names, photo_settings, channel_order,
                                       image_size, progress=bar.update)
  if photos.unreadable and not config.skip_unreadable:
    raise _unreadable(next(iter(photos.unreadable.values())))
  if not photos.records:
    raise preprocess.ImageError(f"no face found in any of the {len(paths)} photos of "
                                f"{config.images} (--config.data.align=detect)")
  logging.info("%d faces to score from %d photos (%d without a face)", len(photos.records),
               len(paths), len(photos.no_face))
  return photos


def _score_rows(config, model, reader, rows: int, row_names: list[str], exit: int):
  """Every row through the model, sharded; (scores of the readable rows, keep mask [rows],
  this host's decode errors by row, images/s)."""
  chunks, keep, local_errors = [], [], {}
  started = time.time()
  with tqdm(total=rows, unit="img", desc="score", smoothing=0.1,
            disable=not (parallel.is_writer() and config.get("progress", True))) as bar:
    for host in pipeline.host_batches(reader, rows, model.batch_size, image_size=model.image_size,
                                      workers=config.data.get("decode_threads", 4)):
      if host.errors and not config.skip_unreadable:
        raise _unreadable(next(iter(host.errors.values())))
      for row, error in host.errors.items():
        logging.warning("skipping unreadable image %s: %s", row_names[row], error)
      local_errors.update(host.errors)
      result = model.run_batch(host.images, exit=exit)
      valid = parallel.global_to_host(parallel.host_batch_to_global(host.valid))
      chunks.append({k: v[:host.num_rows] for k, v in result.items()})
      keep.append(valid[:host.num_rows])
      bar.update(host.num_rows)
  rate = rows / max(time.time() - started, 1e-9)
  keep = np.concatenate(keep)
  scores = {k: np.concatenate([c[k] for c in chunks])[keep] for k in chunks[0]
            if k != "embedding"}
  return scores, keep, local_errors, rate


def _load_model(config, path: str, method: str, dtype: str
                ) -> inference.QualityModel | inference.MethodModel:
  """The quality model or method (errors name the flags that fix them)."""
  with strict.flags_named(family="--config.quality_model.family=",
                          num_heads="--config.quality_model.num_heads=", method=METHOD_FLAG):
    return inference.load(path, method=method, num_heads=config.quality_model.num_heads,
                          family=config.quality_model.family or None,
                          batch_size=config.batch_size, dtype=dtype,
                          method_options=registry.config_options(config.quality_model))


def run(config) -> dict[str, Any]:
  """Scores `config.images` with `config.quality_model`; writes scores.csv/.npz in config.output."""
  method, path = registry.resolve_entry(config.quality_model.path,   # [method:]path
                                        config.quality_model.get("method", ""), METHOD_FLAG)
  channel_order, paths, names = _check_inputs(config, path)
  out = score_report.paths(config.output)
  exit = int(config.get("exit", 0) or 0)
  dtype = inference.check_compute_dtype(config.get("compute_dtype", "float32"),
                                        "--config.compute_dtype=")
  ident = _identity(config, path, method, paths, names, channel_order, exit, dtype)
  mapping = quality_mapping.mapping_for(path, config.get("quality_mapping", ""))
  if mapping is not None:                  # the 0–100 columns depend on it too
    ident["quality_mapping"] = mapping.to_dict()
  align = detection_settings.check_align_mode(config.data.get("align", "none"),
                                              "--config.data.align")
  if align == "detect":                    # raw photos: rows are detected faces
    photo_settings = _photo_settings(config.data)
    ident["align"] = detection_rows.align_identity(photo_settings)
  if identity.begin_run(out["stamp"], ident, (out["csv"], out["npz"], out["skipped"],
                                              out["no_face"]), "scores"):
    return {"scores": out["csv"], "npz": out["npz"], "cached": True}

  model = _load_model(config, path, method, dtype)
  num_exits = model.resolve_exit(exit)      # a clear error for an exit outside 1..L
  logging.info("scoring %d images from %s: %s, %d of %d exits, batch %d on %d devices",
               len(paths), config.images, model.method or f"mode {model.mode}", num_exits,
               model.num_exits, model.batch_size, jax.device_count())
  photos = None
  rows, row_names = len(paths), list(names)
  reader = pipeline.image_reader(paths, channel_order, model.image_size, skip_errors=True)
  if align == "detect":     # detect → align (data/align.py) → score; docs/data.md
    photos = _detect_photos(config, photo_settings, paths, names, channel_order,
                            model.image_size)
    rows, row_names, reader = len(photos.records), photos.names, photos.reader
  scores, keep, local_errors, rate = _score_rows(config, model, reader, rows, row_names, exit)
  kept = [n for n, k in zip(row_names, keep) if k]
  skipped = [(row_names[i], local_errors.get(i, "unreadable (reported by another host)"))
             for i in np.flatnonzero(~keep)]
  found = photos.columns(keep) if photos is not None else {}   # face, det_score, box, landmarks
  if photos is not None:
    skipped = [(names[i], e) for i, e in sorted(photos.unreadable.items())] + skipped
  if not kept:
    raise preprocess.ImageError(f"none of the {len(paths)} images could be decoded; see "
                                "the skipped files in the log")
  if parallel.is_writer():
    q100 = mapping.apply(scores) if mapping is not None and model.has_exits else {}
    score_report.write(out, ident, names, kept, scores, model.has_exits, model.method,
                       {**q100, **found}, skipped, photos.no_face if photos is not None else None,
                       channel_order, exit, path)
  logging.info("scored %d images (%d skipped, %.1f images/s) into %s", len(kept), len(skipped),
               rate, config.output)
  if photos is not None and photos.overflow:
    logging.warning("detector list caps hit on %d photos (a face may be missed; raise "
                    "config.data.detector.max_*): %s", len(photos.overflow), photos.overflow[:5])
  return {"scores": out["csv"], "npz": out["npz"], "cached": False, "count": len(kept),
          **({"no_face": photos.no_face} if photos is not None else {}),
          "skipped": [n for n, _ in skipped], "images_per_second": rate}
