"""Task "score": every image of a folder or list file → scores at every exit (configs/score.py).

Writes into `config.output` (only process 0, atomically):
  scores.csv   image, exit_1..exit_L, ex_fiqa_f, ex_fiqa_fw, attn_1..attn_L — one row per
               image in input order; `image` is the path relative to the folder, or as listed.
               Mode "fr" checkpoints (FR ViTs, no quality head): image, attn_1..attn_L.
  scores.npz   image [N] and the same numbers as arrays: exit_scores [N, L], ex_fiqa_f [N],
               ex_fiqa_fw [N], attn_scores [N, L]; plus the inputs it was computed for.
  skipped.txt  with skip_unreadable=True: every file that could not be decoded, with the reason.
Decoding runs in background threads a few batches ahead (exfiqa_jax/data/pipeline.py); every
batch has the same padded shape (one compilation) and is sharded over all devices; on several
hosts each host decodes only its own rows of every batch. A finished run with the same inputs
is not recomputed.
"""
from __future__ import annotations

import csv
import io as _io
import os
import time
from typing import Any, Sequence

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from exfiqa_jax import api, io, parallel
from exfiqa_jax.data import pipeline, preprocess


def _columns(num_exits: int, has_exits: bool) -> list[str]:
  attn = [f"attn_{l}" for l in range(1, num_exits + 1)]
  if not has_exits:
    return ["image"] + attn
  return (["image"] + [f"exit_{l}" for l in range(1, num_exits + 1)]
          + ["ex_fiqa_f", "ex_fiqa_fw"] + attn)


def score_table(names: Sequence[str], scores: dict[str, np.ndarray], has_exits: bool) -> str:
  """CSV text in the DESIGN contract's column order (floats with 9 significant digits)."""
  num_exits = scores["attn_scores"].shape[1]
  buf = _io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(_columns(num_exits, has_exits))
  for i, name in enumerate(names):
    row = []
    if has_exits:
      row += list(scores["exit_scores"][i]) + [scores["ex_fiqa_f"][i], scores["ex_fiqa_fw"][i]]
    row += list(scores["attn_scores"][i])
    writer.writerow([name] + [f"{float(v):.9g}" for v in row])
  return buf.getvalue()


def _already_done(npz_path: str, names: Sequence[str], checkpoint: str, channel_order: str
                  ) -> bool:
  if not os.path.exists(npz_path):
    return False
  with np.load(npz_path) as done:
    return ("inputs" in done and list(done["inputs"]) == list(names)
            and str(done["checkpoint"]) == checkpoint
            and str(done["channel_order"]) == channel_order)


def run(config) -> dict[str, Any]:
  """Scores `config.images` with `config.checkpoint`; writes scores.csv/.npz in config.output."""
  if not config.checkpoint or not config.images:
    raise ValueError("pass --config.checkpoint=<converted dir or .pt> and "
                     "--config.images=<image folder or list file>")
  channel_order = preprocess.check_channel_order(config.data.channel_order)
  paths, names = preprocess.read_image_list(config.images)
  if not paths:
    raise ValueError(f"no images in {config.images}: a folder needs image files "
                     f"({', '.join(preprocess.IMAGE_EXTENSIONS)}) somewhere below it, a list "
                     "file one path per line")
  out_dir = config.output
  csv_path, npz_path = (os.path.join(out_dir, n) for n in ("scores.csv", "scores.npz"))
  checkpoint = os.path.abspath(config.checkpoint)
  if os.path.exists(csv_path) and _already_done(npz_path, names, checkpoint, channel_order):
    logging.info("scores already complete in %s; nothing to do", out_dir)
    return {"scores": csv_path, "npz": npz_path, "cached": True}

  model = api.load(config.checkpoint, num_heads=config.model.num_heads,
                   family=config.model.get("family") or None, batch_size=config.batch_size)
  batch = model.batch_size
  logging.info("scoring %d images from %s: mode %s, %d exits, batch %d on %d devices",
               len(paths), config.images, model.mode, model.num_exits, batch,
               jax.device_count())
  chunks, keep, local_errors = [], [], {}
  started = time.time()
  with tqdm(total=len(paths), unit="img", desc="score", smoothing=0.1,
            disable=not parallel.is_writer()) as bar:
    reader = pipeline.image_reader(paths, channel_order, model.image_size, skip_errors=True)
    for host in pipeline.host_batches(reader, len(paths), batch, image_size=model.image_size,
                                      workers=config.data.get("decode_threads", 4)):
      images, valid, errors, n = host.images, host.valid, host.errors, host.num_rows
      if errors and not config.skip_unreadable:
        raise preprocess.ImageError(
            f"{next(iter(errors.values()))}\nFix or remove the file, or pass "
            "--config.skip_unreadable=True to skip unreadable images (listed in skipped.txt)")
      for row, error in errors.items():
        logging.warning("skipping unreadable image %s: %s", names[row], error)
      local_errors.update(errors)
      result = model.run_batch(images)
      valid = parallel.global_to_host(parallel.host_batch_to_global(valid))
      chunks.append({k: v[:n] for k, v in result.items()})
      keep.append(valid[:n])
      bar.update(n)
  rate = len(paths) / max(time.time() - started, 1e-9)
  keep = np.concatenate(keep)
  scores = {k: np.concatenate([c[k] for c in chunks])[keep] for k in chunks[0]
            if k != "embedding"}
  kept = [n for n, k in zip(names, keep) if k]
  skipped = [(names[i], local_errors.get(i, "unreadable (reported by another host)"))
             for i in np.flatnonzero(~keep)]
  if not kept:
    raise preprocess.ImageError(f"none of the {len(paths)} images could be decoded; see "
                                "the skipped files in the log")
  if parallel.is_writer():
    skipped_path = os.path.join(out_dir, "skipped.txt")
    if skipped:
      io.write_text(skipped_path, "".join(f"{n}\t{e}\n" for n, e in skipped))
    elif os.path.exists(skipped_path):
      os.remove(skipped_path)   # stale list from an earlier run
    io.write_text(csv_path, score_table(kept, scores, model.has_exits))
    io.save_npz(npz_path, image=np.asarray(kept), inputs=np.asarray(names),
                checkpoint=np.asarray(checkpoint), channel_order=np.asarray(channel_order),
                **scores)
  logging.info("scored %d images (%d skipped, %.1f images/s) into %s", len(kept), len(skipped),
               rate, out_dir)
  return {"scores": csv_path, "npz": npz_path, "cached": False, "count": len(kept),
          "skipped": [n for n, _ in skipped], "images_per_second": rate}
