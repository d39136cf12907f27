"""Converted model directory → PyTorch `.pt` state dict that the official module loads strictly.

  python -m converters.flax_to_torch --checkpoint=DIR --out=X.pt [--overwrite]

Official key names and layouts; BatchNorm `num_batches_tracked` is written as an int64 0 (Flax
does not track it; eval mode does not use it). See exfiqa_jax.checkpoints.directory_to_pt.
An existing --out file is replaced only with --overwrite; a folder never is.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from exfiqa_jax import checkpoints
from exfiqa_jax.convert.strict import CheckpointError


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.checkpoint or not f.out:
    raise app.UsageError("pass --checkpoint=DIR and --out=X.pt")
  try:
    sd = checkpoints.directory_to_pt(f.checkpoint, f.out, overwrite=f.overwrite)
  except (CheckpointError, FileExistsError) as e:     # the message says it all
    sys.exit(f"error: {e}")
  print(f"wrote {os.path.abspath(f.out)} ({len(sd)} tensors)")


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "Converted model directory (model_config.json).")
  flags.DEFINE_string("out", None, "Output PyTorch file (.pt).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.")
  app.run(_main)
