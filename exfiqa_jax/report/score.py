"""The score job's files (docs/evaluation.md, "scores.csv"): scores.csv, scores.npz, skipped.txt
or no_face.txt, and the completion stamp written LAST, so that the files form one set.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from exfiqa_jax import files, identity
from exfiqa_jax.report import tables

STAMP = "score_stamp.json"
OUTPUTS = {"csv": "scores.csv", "npz": "scores.npz", "skipped": "skipped.txt",
           "no_face": "no_face.txt", "stamp": STAMP}


def paths(output: str) -> dict[str, str]:
  """The job's files in `output`, by role (OUTPUTS)."""
  return {k: os.path.join(output, f) for k, f in OUTPUTS.items()}


def write(out: Mapping[str, str], ident: Mapping[str, Any], inputs: Sequence[str],
          kept: Sequence[str], scores: Mapping[str, np.ndarray], has_exits: bool, method: str,
          extra: Mapping[str, np.ndarray], skipped: Sequence[tuple[str, str]],
          no_face: Sequence[str] | None, channel_order: str, exit: int, checkpoint: str) -> None:
  """scores.csv, scores.npz, skipped.txt / no_face.txt (stale ones removed), the stamp LAST.
  `no_face` is None unless the rows are detected faces (data.align="detect")."""
  if skipped:
    files.write_text(out["skipped"], "".join(f"{n}\t{e}\n" for n, e in skipped))
  elif os.path.exists(out["skipped"]):
    os.remove(out["skipped"])   # stale list from an earlier run
  files.write_text(out["csv"], tables.score_table(kept, scores, has_exits, extra=extra))
  if no_face is not None:   # photos without a face: listed, never dropped silently
    files.write_text(out["no_face"], "".join(f"{n}\n" for n in no_face))
  elif os.path.exists(out["no_face"]):
    os.remove(out["no_face"])   # stale list from an earlier align=detect run
  files.save_npz(out["npz"], image=np.asarray(kept), inputs=np.asarray(inputs),
                 checkpoint=np.asarray(os.path.abspath(checkpoint)),
                 channel_order=np.asarray(channel_order), exit=np.asarray(exit),
                 **({"method": np.asarray(method)} if method else {}), **scores, **extra)
  identity.write_stamp(out["stamp"], ident, [out["csv"], out["npz"]]
                       + ([out["skipped"]] if skipped else [])
                       + ([out["no_face"]] if no_face is not None else []))   # LAST
