"""The score job's rows through a model in resumable chunks (exfiqa_jax/tasks/score.py;
docs/caching.md, "score and embed"): each finished chunk is a stage of its own in
<output>/score_chunks/, keyed by the model, the settings and the chunk's own images, so a killed
or interrupted run resumes at the first chunk it had not finished and fixing one image rescores
only its chunk; unreadable rows are collected over the whole run (KEPT / ERROR per row).
"""
from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import numpy as np
from absl import logging
from tqdm import tqdm

from exfiqa_jax import identity, parallel
from exfiqa_jax.data import pipeline
from exfiqa_jax.evaluation import stages

CHUNK_IMAGES = 4096    # rows per stored chunk when the config has no chunk_images
KEPT, ERROR = "__kept__", "__error__"    # a chunk's rows read, and why a row was not


@dataclasses.dataclass
class Rows:
  """What the chunks score: each row's name and the file it is read from, the pipeline reader,
  and for detected faces their detection columns (a chunk depends on its rows' faces too)."""
  names: list[str]
  files: list[str]
  reader: Any
  faces: dict[str, np.ndarray] | None = None

  def chunk_identity(self, lo: int, hi: int, digest: bool) -> dict[str, Any]:
    """What rows [lo, hi) are made from (with the run's model and settings: score_chunks)."""
    return {"rows": [lo, hi], "names": identity.names_identity(self.names[lo:hi]),
            "images": identity.files_identity(self.files[lo:hi], digest=digest),
            **({"faces": {k: v[lo:hi] for k, v in self.faces.items()}}
               if self.faces is not None else {})}


def check_chunk_images(config) -> None:
  """--config.chunk_images is a whole number >= 1 (a ValueError naming the flag)."""
  size = config.get("chunk_images", CHUNK_IMAGES)
  if isinstance(size, bool) or not isinstance(size, int) or size < 1:
    raise ValueError(f"--config.chunk_images={size!r}: must be a whole number >= 1 (images "
                     "per stored chunk of a resumable run)")


def _host_batches(config, model, reader, lo: int, hi: int, errors: list[str], bar):
  """This process's batches of rows [lo, hi) (pipeline.host_batches): why a row could not be
  read goes into `errors` [hi - lo], and the progress bar moves once a batch is used."""
  for host in pipeline.host_batches(reader, hi, model.batch_size, start=lo,
                                    image_size=model.image_size,
                                    workers=config.data.get("decode_threads", 4)):
    for row, error in host.errors.items():
      errors[row - lo] = error
    yield host
    bar.update(host.num_rows)


def compute_chunk(config, model, reader, lo: int, hi: int, exit: int, bar
                   ) -> dict[str, np.ndarray]:
  """Rows [lo, hi) through the model, sharded: every score array, KEPT (the row was read) and
  ERROR (why not, on the process that read it; "" elsewhere)."""
  parts, kept, errors = [], [], [""] * (hi - lo)
  for host in _host_batches(config, model, reader, lo, hi, errors, bar):
    result = model.run_batch(host.images, exit=exit)
    valid = parallel.global_to_host(parallel.host_batch_to_global(host.valid))
    parts.append({k: v[:host.num_rows] for k, v in result.items() if k != "embedding"})
    kept.append(valid[:host.num_rows])
  return {**{k: np.concatenate([p[k] for p in parts]) for k in parts[0]},
          KEPT: np.concatenate(kept), ERROR: np.asarray(errors, dtype=str)}


CASCADE_COLUMNS = ("cascade_score", "cascade_exit", "cascade_accept", "cascade_gflops")


def compute_cascade_chunk(config, model, reader, lo: int, hi: int, thresholds, bar
                          ) -> dict[str, np.ndarray]:
  """Rows [lo, hi) through the adaptive cascade (models/exits.py, CascadeStream): the rows
  read are pushed batch by batch, survivors carried across batches so that every segment runs
  on full buckets, the rest flushed at the chunk's end. CASCADE_COLUMNS per row (NaN / exit 0
  where not read), KEPT and ERROR as compute_chunk. One host (QualityModel.cascade_stream)."""
  stream = model.cascade_stream(thresholds)
  kept, errors, parts = np.zeros(hi - lo, bool), [""] * (hi - lo), []
  for host in _host_batches(config, model, reader, lo, hi, errors, bar):
    kept[host.rows[host.valid] - lo] = True          # valid: a real row that was read
    parts.append(stream.push(host.images[host.valid]))
  parts.append(stream.flush())
  out = {}
  for name, column in zip(CASCADE_COLUMNS, zip(*parts)):
    value = np.concatenate(column)
    out[name] = np.full(hi - lo, np.nan if value.dtype.kind == "f" else 0, value.dtype)
    out[name][kept] = value
  return {**out, KEPT: kept, ERROR: np.asarray(errors, dtype=str)}


def note_interrupted(error: KeyboardInterrupt, text: str) -> None:
  """Adds what an interrupted run kept to the KeyboardInterrupt (PEP 678 notes: the traceback
  shows it, the command line prints it as its one line; exfiqa_jax/cli.py)."""
  error.__notes__ = [*getattr(error, "__notes__", []), text]


def score_chunks(config, model, rows: Rows, base: dict[str, Any], digest: bool,
                  out: dict[str, str], exit: int, cascade=None
                  ) -> tuple[dict[str, np.ndarray], int, float | None]:
  """Every row through the model (through the cascade with thresholds `cascade`:
  compute_cascade_chunk), one stored chunk at a time (score_chunks/; a chunk of an earlier run
  made from the same model, settings and images is loaded instead): (every row's arrays, rows
  taken from an earlier run, images/s of the rows scored now: None if none)."""
  total = len(rows.names)
  size = max(1, int(config.get("chunk_images", CHUNK_IMAGES)) // model.batch_size
             ) * model.batch_size                     # whole batches: the batches of one pass
  cache = stages.StageCache(out["chunks"], progress=False)
  pieces, sizes, resumed, seconds, warned = [], {}, 0, 0.0, config.skip_unreadable
  with tqdm(total=total, unit="img", desc="score", smoothing=0.1,
            disable=not (parallel.is_writer() and config.get("progress", True))) as bar:
    try:
      for lo in range(0, total, size):
        hi, started, name = min(total, lo + size), time.time(), f"rows_{lo:010d}"
        sizes[name] = hi - lo
        compute, how = (compute_chunk, exit) if cascade is None else (compute_cascade_chunk,
                                                                      cascade)
        stage = cache.run(name, {**base, **rows.chunk_identity(lo, hi, digest)},
                          functools.partial(compute, config, model, rows.reader, lo, hi, how,
                                            bar))
        if stage.cached:
          resumed += hi - lo
          bar.update(hi - lo)
        else:
          seconds += time.time() - started
        if not warned and not stage[KEPT].all():
          warned = True
          logging.warning("unreadable: %s; the run scores every other image, then lists all "
                          "that cannot be read (--config.skip_unreadable=True skips them)",
                          next((e for e in stage[ERROR] if e), "(read by another process)"))
        pieces.append(stage.arrays)
    except KeyboardInterrupt as e:
      kept = sum(sizes[event["stage"]] for event in cache.events     # stored or loaded
                 if event["event"] in ("computed", "cached"))
      note_interrupted(e, f"{kept} of {total} images are scored and kept in {out['chunks']}; the "
                      "same command resumes there")
      raise
  if resumed:
    logging.info("%d of %d images from the chunks of an earlier run in %s", resumed, total,
                 out["chunks"])
  arrays = {k: np.concatenate([p[k] for p in pieces]) for k in pieces[0]}
  return arrays, resumed, (total - resumed) / max(seconds, 1e-9) if total > resumed else None


def problems(rows: Rows, arrays: dict[str, np.ndarray], photos, names: list[str]
              ) -> list[tuple[str, str]]:
  """(name, why) of every input that could not be read: unreadable photos, then rows."""
  found = [(names[i], e) for i, e in sorted(photos.unreadable.items())] if photos else []
  return found + [(rows.names[i], str(arrays[ERROR][i]) or
                   "unreadable (reported by another host)")
                  for i in np.flatnonzero(~arrays[KEPT])]
