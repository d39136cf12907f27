"""The score job's files (docs/evaluation.md, "scores.csv"): scores.csv, scores.npz, skipped.txt
or no_face.txt, and the completion stamp written LAST, so that the files form one set; while a
run is unfinished, its scored chunks (score_chunks/) and, when it stopped on unreadable images,
unreadable.txt (docs/caching.md, "score and embed").
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Mapping, Sequence

import numpy as np

from exfiqa_jax import files, identity
from exfiqa_jax.report import tables

STAMP = "score_stamp.json"
OUTPUTS = {"csv": "scores.csv", "npz": "scores.npz", "skipped": "skipped.txt",
           "no_face": "no_face.txt", "unreadable": "unreadable.txt", "chunks": "score_chunks",
           "stamp": STAMP}


def paths(output: str) -> dict[str, str]:
  """The job's files in `output`, by role (OUTPUTS)."""
  return {k: os.path.join(output, f) for k, f in OUTPUTS.items()}


def _listing(problems: Sequence[tuple[str, str]]) -> str:
  return "".join(f"{n}\t{e}\n" for n, e in problems)


def write_unreadable(out: Mapping[str, str], problems: Sequence[tuple[str, str]]) -> None:
  """unreadable.txt: every (name, why) of a run that stopped on them, one tab-separated line
  each, as skipped.txt lists them when they are skipped."""
  files.write_text(out["unreadable"], _listing(problems))


def write(out: Mapping[str, str], ident: Mapping[str, Any], inputs: Sequence[str],
          kept: Sequence[str], scores: Mapping[str, np.ndarray], has_exits: bool, method: str,
          extra: Mapping[str, np.ndarray], skipped: Sequence[tuple[str, str]],
          no_face: Sequence[str] | None, channel_order: str, exit: int, checkpoint: str,
          stamp: bool = True) -> None:
  """scores.csv, scores.npz, skipped.txt / no_face.txt (stale ones removed), the stamp LAST
  (unless not `stamp`: inputs changed while the run read them);
  then the chunks of the run and an earlier run's unreadable.txt go. `no_face` is None unless
  the rows are detected faces (data.align="detect")."""
  written = {}      # what each writer wrote: the stamp vouches for this run's files only
  if skipped:
    written[out["skipped"]] = files.write_text(out["skipped"], _listing(skipped))
  elif os.path.exists(out["skipped"]):
    os.remove(out["skipped"])   # stale list from an earlier run
  written[out["csv"]] = files.write_text(out["csv"], tables.score_table(kept, scores, has_exits,
                                                                        extra=extra))
  if no_face is not None:   # photos without a face: listed, never dropped silently
    written[out["no_face"]] = files.write_text(out["no_face"],
                                               "".join(f"{n}\n" for n in no_face))
  elif os.path.exists(out["no_face"]):
    os.remove(out["no_face"])   # stale list from an earlier align=detect run
  written[out["npz"]] = files.save_npz(
      out["npz"], image=np.asarray(kept), inputs=np.asarray(inputs),
      checkpoint=np.asarray(os.path.abspath(checkpoint)), channel_order=np.asarray(channel_order),
      exit=np.asarray(exit), **({"method": np.asarray(method)} if method else {}), **scores,
      **extra)
  if stamp:
    identity.write_stamp(out["stamp"], ident, written)   # LAST
  elif os.path.exists(out["stamp"]):
    os.remove(out["stamp"])           # an earlier run's stamp must not vouch for these files
  if os.path.exists(out["unreadable"]):
    os.remove(out["unreadable"])      # the list of a run that stopped on them
  shutil.rmtree(out["chunks"], ignore_errors=True)   # scores.npz holds every row now
