r"""Converted model directory → PyTorch `.pt` state dict that the official module loads strictly.

  python -m converters.flax_to_torch --checkpoint=DIR --out=X.pt [--overwrite]

A checkout's name for the console script `exfiqa-flax-to-torch`: both run
exfiqa_jax/convert_cli.py (which documents the flags; docs/checkpoints.md).
"""
from exfiqa_jax import convert_cli

if __name__ == "__main__":
  convert_cli.flax_to_torch_main()
