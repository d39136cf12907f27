"""Converted model directory → PyTorch `.pt` state dict that the official module loads strictly.

  python -m converters.flax_to_torch --checkpoint=DIR --out=X.pt

Official key names and layouts; BatchNorm `num_batches_tracked` is written as an int64 0 (Flax
does not track it; eval mode does not use it). See exfiqa_jax.checkpoints.directory_to_pt.
"""
from __future__ import annotations

import os

from absl import app, flags

from exfiqa_jax import checkpoints


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.checkpoint or not f.out:
    raise app.UsageError("pass --checkpoint=DIR and --out=X.pt")
  sd = checkpoints.directory_to_pt(f.checkpoint, f.out)
  print(f"wrote {os.path.abspath(f.out)} ({len(sd)} tensors)")


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "Converted model directory (model_config.json).")
  flags.DEFINE_string("out", None, "Output PyTorch file (.pt).")
  app.run(_main)
