r"""The converters' command lines: `exfiqa-torch-to-flax` and `exfiqa-flax-to-torch` (console
scripts), the same as a checkout's `python -m converters.torch_to_flax` / `.flax_to_torch`.

  exfiqa-torch-to-flax --checkpoint=vitfiqa_token.pt --out=ckpt/vitfiqa_token \
      [--num_heads=16] [--family=vit] [--overwrite]
  exfiqa-flax-to-torch --checkpoint=ckpt/vitfiqa_token --out=vitfiqa_token_back.pt [--overwrite]

torch → flax: the family is detected from the keys unless --family names it; the architecture
comes from the shapes; --num_heads is the one thing no shape records (0, the default: a published
architecture's own count, e.g. 16 for the CVLFace ViT-B; else 8, with a warning). Strict: a
missing, unexpected or mis-shaped key stops the conversion with a list of all of them. The result
is converted back and compared bit for bit with the input before anything is written
(checkpoints.pt_to_directory; docs/checkpoints.md). Nothing the converter did not write is
deleted: an --out holding other files is refused unless --overwrite is passed, and an --out that
is a file, or is or holds the input, always is; an earlier conversion is replaced.

flax → torch: official key names and layouts; BatchNorm `num_batches_tracked` is written as an
int64 0 (Flax does not track it; eval mode does not use it). An existing --out file is replaced
only with --overwrite; a folder never is (checkpoints.directory_to_pt).

Both print INFO from this package only, as `exfiqa` does (console.py; --verbosity=0 shows all).
"""
from __future__ import annotations

import os
import sys
from typing import Callable

from absl import app, flags

from exfiqa_jax import checkpoints, console, convert
from exfiqa_jax.convert.strict import CheckpointError

FLAGS = flags.FLAGS


def _checked(argv: list[str], wanted: str) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not FLAGS.checkpoint or not FLAGS.out:
    raise app.UsageError(f"pass {wanted}")
  console.quiet_third_party()


def torch_to_flax(argv: list[str]) -> None:
  """absl main: a PyTorch .pt → a converted directory; one `error:` line when refused."""
  _checked(argv, "--checkpoint=X.pt and --out=DIR")
  try:
    config = checkpoints.pt_to_directory(FLAGS.checkpoint, FLAGS.out, num_heads=FLAGS.num_heads,
                                         family=FLAGS.family or None, overwrite=FLAGS.overwrite)
  except (CheckpointError, FileExistsError, FileNotFoundError) as e:   # the message says it all
    sys.exit(f"error: {e}")
  print(f"wrote {os.path.abspath(FLAGS.out)} ({config['family']}, "
        f"{config.get('mode', config.get('layout'))})")


def flax_to_torch(argv: list[str]) -> None:
  """absl main: a converted directory → a PyTorch .pt; one `error:` line when refused."""
  _checked(argv, "--checkpoint=DIR and --out=X.pt")
  try:
    sd = checkpoints.directory_to_pt(FLAGS.checkpoint, FLAGS.out, overwrite=FLAGS.overwrite)
  except (CheckpointError, FileExistsError) as e:     # the message says it all
    sys.exit(f"error: {e}")
  print(f"wrote {os.path.abspath(FLAGS.out)} ({len(sd)} tensors)")


def _run(main: Callable[[list[str]], None]) -> None:
  """app.run(main) with this module's docstring as --help's usage text (a console script's
  __main__ has none)."""
  module = sys.modules["__main__"]
  if not module.__doc__:
    module.__doc__ = __doc__
  app.run(main)


def _here() -> dict[str, str]:
  """Flags declared for the running script, so that absl's --help lists them."""
  return dict(module_name=sys.argv[0])


def torch_to_flax_main() -> None:
  """Console script `exfiqa-torch-to-flax` (and converters/torch_to_flax.py)."""
  here = _here()
  flags.DEFINE_string("checkpoint", None, "PyTorch .pt/.pth state dict to convert.", **here)
  flags.DEFINE_string("out", None, "Output directory (Orbax variables + model_config.json).",
                      **here)
  flags.DEFINE_integer("num_heads", 0, "Attention heads (not recorded in any weight shape); "
                       "0 = the published architecture's own count, else 8.", **here)
  flags.DEFINE_string("family", "", f"Model family; empty = detect from the keys. Known: "
                      f"{convert.families.names()}", **here)
  flags.DEFINE_bool("overwrite", False, "Replace --out even when it holds files that no "
                    "conversion wrote (never the input).", **here)
  _run(torch_to_flax)


def flax_to_torch_main() -> None:
  """Console script `exfiqa-flax-to-torch` (and converters/flax_to_torch.py)."""
  here = _here()
  flags.DEFINE_string("checkpoint", None, "Converted model directory (model_config.json).",
                      **here)
  flags.DEFINE_string("out", None, "Output PyTorch file (.pt).", **here)
  flags.DEFINE_bool("overwrite", False, "Replace an existing --out file.", **here)
  _run(flax_to_torch)
