"""Task "train": ViT-FIQA training (configs/train_vitfiqa.py, configs/train_tiny.py).

Builds the training set and the monitoring pair set from config.data / config.eval and runs the
loop of exfiqa_jax/train/trainer.py (Orbax checkpoints, bit-exact resume, model export).
"""
from __future__ import annotations

from typing import Any

from exfiqa_jax.train import data, trainer


def run(config) -> dict[str, Any]:
  trainer.check_config(config)             # before the data are built
  train_data, pairs = data.build_data(config)
  state = trainer.train(config, train_data, pairs)
  return {"step": int(state.step), "output": config.output}
