"""PyTorch `.pt` state dict → converted model directory (Orbax variables + model_config.json).

  python -m converters.torch_to_flax --checkpoint=vitfiqa_token.pt --out=ckpt/vitfiqa_token \
      [--num_heads=8] [--family=vit]

The family is detected from the keys (converters/families.py) unless --family names it; the
architecture comes from the shapes; --num_heads is the one thing no shape records (default 8;
CVLFace ViT-B uses 16). Strict: a missing, unexpected or mis-shaped key stops the conversion
with a list of all of them. The result is converted back and compared bit for bit with the
input before anything is written.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
from absl import app, flags, logging

from converters import families, torch_io
from converters.strict import CheckpointError


def convert_state_dict(sd: Mapping[str, np.ndarray], num_heads: int = 8,
                       family: str | None = None) -> tuple[dict, dict[str, Any]]:
  """Unwrapped state dict → ({"params", "batch_stats"}, model_config); strict, verified."""
  fam = families.detect_family(sd, family)
  config = fam.infer_config(sd, num_heads=num_heads)
  variables = fam.to_flax(sd, config)
  check_round_trip(sd, fam.to_torch(variables, config))
  return variables, config


def check_round_trip(sd: Mapping[str, np.ndarray], back: Mapping[str, np.ndarray]) -> None:
  """Every converted-back tensor equals the input bit for bit (num_batches_tracked aside)."""
  bad = [k for k in back if not k.endswith("num_batches_tracked") and (
      k not in sd or not np.array_equal(np.asarray(sd[k], np.float32), back[k]))]
  if bad:
    raise CheckpointError(f"internal error: converting back does not reproduce {bad[:10]}; "
                          "please report it with the checkpoint's key list")


def convert(checkpoint: str, out: str, num_heads: int = 8, family: str | None = None
            ) -> dict[str, Any]:
  """Reads `checkpoint`, writes the converted directory `out`; returns its model_config."""
  from exfiqa_jax import checkpoints
  sd = torch_io.load_state_dict(checkpoint)
  variables, config = convert_state_dict(sd, num_heads=num_heads, family=family)
  checkpoints.save_model(out, variables, config)
  count = sum(int(np.size(v)) for v in _leaves(variables.get("params", {})))
  logging.info("converted %s (%s, %s) → %s: %d parameters",
               checkpoint, config["family"], config.get("mode", config.get("layout")),
               os.path.abspath(out), count)
  return config


def _leaves(tree):
  for v in tree.values():
    if isinstance(v, Mapping):
      yield from _leaves(v)
    else:
      yield v


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.checkpoint or not f.out:
    raise app.UsageError("pass --checkpoint=X.pt and --out=DIR")
  config = convert(f.checkpoint, f.out, num_heads=f.num_heads, family=f.family or None)
  print(f"wrote {os.path.abspath(f.out)} ({config['family']}, "
        f"{config.get('mode', config.get('layout'))})")


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "PyTorch .pt/.pth state dict to convert.")
  flags.DEFINE_string("out", None, "Output directory (Orbax variables + model_config.json).")
  flags.DEFINE_integer("num_heads", 8, "Attention heads (not recorded in any weight shape).")
  flags.DEFINE_string("family", "", f"Model family; empty = detect from the keys. Known: "
                      f"{families.names()}")
  app.run(_main)
