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

Rows are scored in chunks of `chunk_images` (a multiple of the batch, so the batches and the
numbers are those of one pass): each finished chunk is stored at once in score_chunks/, keyed by
the model, the settings and its own images, so a killed or interrupted run (Ctrl-C says how many
images it kept) resumes at the first chunk it had not finished, and fixing one image rescores
only its chunk. Unreadable images are collected over the whole run: without skip_unreadable the
run scores every other image, then stops once, listing all of them (unreadable.txt); a rerun
with --config.skip_unreadable=True then takes every chunk from score_chunks/.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from exfiqa_jax import files, identity, inference, parallel, quality_mapping
from exfiqa_jax.data import pipeline, preprocess
from exfiqa_jax.detection import rows as detection_rows
from exfiqa_jax.detection import settings as detection_settings
from exfiqa_jax.evaluation import score_chunks, score_inputs
from exfiqa_jax.methods import registry
from exfiqa_jax.report import score as score_report

PATH_FIELDS = ("output", "images", "image_root", "quality_mapping", "compile_cache")  # `~` expanded
SHOWN = 10             # unreadable images named in the error (all of them in unreadable.txt)


def _unreadable(out: dict[str, str], problems: list[tuple[str, str]], total: int
                ) -> preprocess.ImageError:
  """The one error of a run that met unreadable images: how many, the first SHOWN, and where
  the full list is (written here, on the writing process)."""
  if parallel.is_writer():
    score_report.write_unreadable(out, problems)
  shown = "".join(f"\n  {error if name in error else f'{name}: {error}'}"
                  for name, error in problems[:SHOWN])
  more = f"\n  ... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
  kept = (f"; the images scored are kept in {out['chunks']}, so the rerun scores only the "
          "chunks that changed" if os.path.isdir(out["chunks"]) else "")
  return preprocess.ImageError(
      f"{len(problems)} of {total} images cannot be read:{shown}{more}\n"
      f"All {len(problems)} are listed in {out['unreadable']}. Fix or remove the files, or pass "
      f"--config.skip_unreadable=True to skip them (listed in skipped.txt){kept}")


def _photo_settings(data) -> detection_settings.PhotoSettings:
  """config.data's detection keys (configs/score.py) as plain settings for detection/."""
  return detection_settings.PhotoSettings.from_config(data)


def _detect_photos(config, out, photo_settings, paths, names, channel_order, image_size: int):
  """Raw photos → the detected faces to score (detection/rows.py; docs/data.md)."""
  with tqdm(total=len(paths), unit="photo", desc="detect", smoothing=0.1,
            disable=not (parallel.is_writer() and config.get("progress", True))) as bar:
    photos = detection_rows.photo_rows(paths, names, photo_settings, channel_order,
                                       image_size, progress=bar.update)
  if photos.unreadable:                  # listed with the rows' at the end (score_chunks.problems)
    logging.warning("%d of %d photos cannot be read, e.g. %s", len(photos.unreadable),
                    len(paths), next(iter(photos.unreadable.values())))
  if not photos.records:
    if photos.unreadable and not config.skip_unreadable:
      raise _unreadable(out, [(names[i], e) for i, e in sorted(photos.unreadable.items())],
                        len(paths))
    raise preprocess.ImageError(f"no face found in any of the {len(paths)} photos of "
                                f"{config.images} (--config.data.align=detect)")
  logging.info("%d faces to score from %d photos (%d without a face)", len(photos.records),
               len(paths), len(photos.no_face))
  return photos


def run(config) -> dict[str, Any]:
  """Scores `config.images` with `config.quality_model`; writes scores.csv/.npz in config.output."""
  config = files.with_user_paths(config, PATH_FIELDS)     # `~` in every path field, once
  method, path = registry.resolve_entry(config.quality_model.path,   # [method:]path
                                        config.quality_model.get("method", ""),
                                        score_inputs.METHOD_FLAG)
  path = os.path.expanduser(path)
  channel_order, paths, names = score_inputs.check_inputs(config, path)
  # one run per output folder: two would interleave their chunks and files under one stamp
  with files.folder_lock(config.output, "score", "--config.output",
                         enabled=parallel.is_writer()):
    return _run(config, method, path, channel_order, paths, names)


def _run(config, method: str, path: str, channel_order: str, paths: list[str],
         names: list[str]) -> dict[str, Any]:
  out = score_report.paths(config.output)
  exit = int(config.get("exit", 0) or 0)
  dtype = inference.check_compute_dtype(config.get("compute_dtype", "float32"),
                                        "--config.compute_dtype=")
  cascade = score_inputs.stored_cascade(config, path, method, exit)   # before hashing inputs
  ident = score_inputs.identity_of(config, path, method, paths, names, channel_order, exit,
                                   dtype)
  if cascade is not None:                  # the thresholds decide every column
    ident["cascade"] = cascade.to_dict()
  mapping = quality_mapping.mapping_for(path, config.get("quality_mapping", ""))
  if mapping is not None:                  # the 0–100 columns depend on it too
    ident["quality_mapping"] = mapping.to_dict()
  align = detection_settings.check_align_mode(config.data.get("align", "none"),
                                              "--config.data.align")
  if align == "detect":                    # raw photos: rows are detected faces
    photo_settings = _photo_settings(config.data)
    ident["align"] = detection_rows.align_identity(photo_settings)
  if identity.begin_run(out["stamp"], ident, [out[k] for k in score_report.OUTPUTS
                                              if k != "stamp"], "scores"):
    return {"scores": out["csv"], "npz": out["npz"], "cached": True}

  model = score_inputs.load_model(config, path, method, dtype)
  ident["checkpoint"] = score_inputs.loaded_checkpoint(path, ident["checkpoint"], model)
  num_exits = model.resolve_exit(exit)      # a clear error for an exit outside 1..L
  if cascade is not None:
    model.cascade_thresholds(cascade)       # a clear error for a model without these exits
  logging.info("scoring %d images from %s: %s, %d of %d exits, batch %d on %d devices",
               len(paths), config.images, model.method or f"mode {model.mode}", num_exits,
               model.num_exits, model.batch_size, jax.device_count())
  photos = None
  rows = score_chunks.Rows(list(names), list(paths),
               pipeline.image_reader(paths, channel_order, model.image_size, skip_errors=True))
  if align == "detect":     # detect → align (data/align.py) → score; docs/data.md
    photos = _detect_photos(config, out, photo_settings, paths, names, channel_order,
                            model.image_size)
    rows = score_chunks.Rows(photos.names, [paths[r.image] for r in photos.records], photos.reader,
                 photos.columns())
  base = {k: v for k, v in ident.items()    # what every chunk depends on, with its own rows
          if k not in ("images", "names", "skip_unreadable", "quality_mapping")}
  base.update(batch_size=model.batch_size, devices=jax.device_count())   # the same bits
  arrays, resumed, rate = score_chunks.score_chunks(config, model, rows, base,
                                                     "sha256" in ident["images"], out, exit,
                                                     cascade)
  # An image replaced while the run read it: the files are written, never stamped complete
  # (the stamp would vouch for bytes that were not all scored), so the next run scores again.
  stamp = identity.files_identity(paths) == ident["images"]
  if not stamp:
    logging.warning("images under %s changed while this run read them; the scores are written "
                    "but not marked complete, so the next run scores them again", config.images)
  return _finish(config, out, ident, model, rows, arrays, photos, names, mapping,
                 channel_order, exit, path, resumed, rate, stamp, cascade is not None)


def _finish(config, out, ident, model, rows: score_chunks.Rows, arrays, photos, names, mapping,
            channel_order: str, exit: int, path: str, resumed: int, rate: float | None,
            stamp: bool = True, cascade: bool = False) -> dict[str, Any]:
  """The scored rows → the job's files (stamped complete when `stamp`), or one error listing
  every unreadable input. `cascade`: the rows hold the cascade's columns."""
  keep = arrays[score_chunks.KEPT]
  skipped = score_chunks.problems(rows, arrays, photos, names)
  if skipped and not config.skip_unreadable:
    raise _unreadable(out, skipped, len(names))
  if skipped:
    logging.warning("skipping %d unreadable images (listed in %s), e.g. %s", len(skipped),
                    out["skipped"], skipped[0][1])
  kept = [n for n, k in zip(rows.names, keep) if k]
  if not kept:
    if parallel.is_writer():
      score_report.write_unreadable(out, skipped)
    raise preprocess.ImageError(f"none of the {len(names)} images could be read (all listed in "
                                f"{out['unreadable']}), e.g. {skipped[0][1]}")
  scores = {k: v[keep] for k, v in arrays.items() if k not in (score_chunks.KEPT,
                                                           score_chunks.ERROR)}
  if jax.process_count() > 1:       # every host read its chunks before process 0 removes them
    multihost_utils.sync_global_devices("score: chunks read")
  found = photos.columns(keep) if photos is not None else {}   # face, det_score, box, landmarks
  if cascade:                       # its own columns, the 0–100 value at the exit left
    chosen = {k: scores.pop(k) for k in score_chunks.CASCADE_COLUMNS}
    if mapping is not None:
      chosen["q100_cascade"] = mapping.at_exits(chosen["cascade_score"], chosen["cascade_exit"])
    found, q100 = {**chosen, **found}, {}
    logging.info("cascade: %.3g GFLOPs per image on average, %.1f %% accepted; images left at "
                 "exits %s", float(np.mean(found["cascade_gflops"])),
                 100 * float(np.mean(found["cascade_accept"])),
                 dict(zip(*(v.tolist() for v in np.unique(found["cascade_exit"],
                                                          return_counts=True)))))
  else:
    q100 = mapping.apply(scores) if mapping is not None and model.has_exits else {}
  if parallel.is_writer():
    score_report.write(out, ident, names, kept, scores, model.has_exits and not cascade,
                       model.method, {**q100, **found}, skipped,
                       photos.no_face if photos is not None else None, channel_order, exit,
                       path, stamp)
  now = (f"{len(rows.names) - resumed} scored now, {rate:.1f} images/s" if rate is not None
         else "none scored now")
  logging.info("scored %d images (%d skipped; %s, %d from an earlier run) into %s", len(kept),
               len(skipped), now, resumed, config.output)
  if photos is not None and photos.overflow:
    logging.warning("detector list caps hit on %d photos (a face may be missed; raise "
                    "config.data.detector.max_*): %s", len(photos.overflow), photos.overflow[:5])
  return {"scores": out["csv"], "npz": out["npz"], "cached": False, "count": len(kept),
          **({"no_face": photos.no_face} if photos is not None else {}),
          "skipped": [n for n, _ in skipped], "resumed": resumed, "images_per_second": rate}
