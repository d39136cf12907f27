"""exfiqa-jax entry point: parse the config, set up devices/hosts, run `config.task`.

  python main.py --config=configs/demo.py
  python main.py --config=configs/score.py --config.checkpoint=X.pt --config.images=DIR \
      --config.output=OUT
  python main.py --config=configs/eval_ijbc.py --config.data.manual_dir=... --config.checkpoint=...

All logic lives in importable modules (each exposes `run(config)`), so tests call them directly.
"""
from __future__ import annotations

import importlib

from absl import app, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)

TASKS = {
    "score": "exfiqa_jax.score",
    "eval": "exfiqa_jax.evaluate",
    "demo": "exfiqa_jax.demo",
    "train": "exfiqa_jax.train.trainer",
    "embed": "exfiqa_jax.embed",
}


def main(argv: list[str]) -> None:
  del argv
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("pass --config=configs/<job>.py (e.g. configs/demo.py)")
  if config.task not in TASKS:
    raise app.UsageError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
  if config.get("distributed", False):
    import jax
    jax.distributed.initialize()
  logging.info("task %s", config.task)
  importlib.import_module(TASKS[config.task]).run(config)


if __name__ == "__main__":
  app.run(main)
