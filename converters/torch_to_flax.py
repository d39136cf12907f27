r"""PyTorch `.pt` state dict → converted model directory (Orbax variables + model_config.json).

  python -m converters.torch_to_flax --checkpoint=vitfiqa_token.pt --out=ckpt/vitfiqa_token \
      [--num_heads=16] [--family=vit] [--overwrite]

A checkout's name for the console script `exfiqa-torch-to-flax`: both run
exfiqa_jax/convert_cli.py (which documents the flags; docs/checkpoints.md).
"""
from exfiqa_jax import convert_cli

if __name__ == "__main__":
  convert_cli.torch_to_flax_main()
