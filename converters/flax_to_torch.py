"""Converted model directory → PyTorch `.pt` state dict that the official module loads strictly.

  python -m converters.flax_to_torch --checkpoint=DIR --out=X.pt

Official key names and layouts (converters/families.py); BatchNorm `num_batches_tracked` is
written as an int64 0 (Flax does not track it; eval mode does not use it).
"""
from __future__ import annotations

import os

import numpy as np
from absl import app, flags, logging

from converters import families, torch_io


def convert(checkpoint: str, out: str) -> dict[str, np.ndarray]:
  """Reads the directory `checkpoint`, writes `out` (.pt); returns the state dict written."""
  from exfiqa_jax import checkpoints
  variables, config = checkpoints.load_model(checkpoint)
  family = families.family_of_config(config)
  sd = family.to_torch(checkpoints.to_numpy(variables), config)
  torch_io.save_state_dict(sd, out)
  logging.info("wrote %s: %d tensors (%s)", os.path.abspath(out), len(sd), family.name)
  return sd


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.checkpoint or not f.out:
    raise app.UsageError("pass --checkpoint=DIR and --out=X.pt")
  sd = convert(f.checkpoint, f.out)
  print(f"wrote {os.path.abspath(f.out)} ({len(sd)} tensors)")


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "Converted model directory (model_config.json).")
  flags.DEFINE_string("out", None, "Output PyTorch file (.pt).")
  app.run(_main)
