"""PyTorch `.pt` state dict → converted model directory (Orbax variables + model_config.json).

  python -m converters.torch_to_flax --checkpoint=vitfiqa_token.pt --out=ckpt/vitfiqa_token \
      [--num_heads=16] [--family=vit] [--overwrite]

The family is detected from the keys unless --family names it; the architecture comes from the
shapes; --num_heads is the one thing no shape records (0, the default: a published
architecture's own count, e.g. 16 for the CVLFace ViT-B; else 8, with a warning).
Strict: a missing, unexpected or mis-shaped key stops the conversion with a list of all of them.
The result is converted back and compared bit for bit with the input before anything is written
(exfiqa_jax.checkpoints.pt_to_directory; docs/checkpoints.md). Nothing the converter did not
write is deleted: an --out holding other files is refused unless --overwrite is passed, and an
--out that is a file, or is or holds the input, always is; an earlier conversion is replaced.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from exfiqa_jax import checkpoints, convert
from exfiqa_jax.convert.strict import CheckpointError


def _main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  f = flags.FLAGS
  if not f.checkpoint or not f.out:
    raise app.UsageError("pass --checkpoint=X.pt and --out=DIR")
  try:
    config = checkpoints.pt_to_directory(f.checkpoint, f.out, num_heads=f.num_heads,
                                         family=f.family or None, overwrite=f.overwrite)
  except (CheckpointError, FileExistsError, FileNotFoundError) as e:   # the message says it all
    sys.exit(f"error: {e}")
  print(f"wrote {os.path.abspath(f.out)} ({config['family']}, "
        f"{config.get('mode', config.get('layout'))})")


if __name__ == "__main__":
  flags.DEFINE_string("checkpoint", None, "PyTorch .pt/.pth state dict to convert.")
  flags.DEFINE_string("out", None, "Output directory (Orbax variables + model_config.json).")
  flags.DEFINE_integer("num_heads", 0, "Attention heads (not recorded in any weight shape); "
                       "0 = the published architecture's own count, else 8.")
  flags.DEFINE_string("family", "", f"Model family; empty = detect from the keys. Known: "
                      f"{convert.families.names()}")
  flags.DEFINE_bool("overwrite", False, "Replace --out even when it holds files that no "
                    "conversion wrote (never the input).")
  app.run(_main)
