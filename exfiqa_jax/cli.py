"""The command line: parse a config file, set up devices and hosts, run `config.task`.

  python main.py --config=configs/demo.py          (or the console script: exfiqa --config=...)
  python main.py --config=configs/score.py --config.quality_model.path=X.pt \
      --config.images=DIR --config.output=OUT

Every task is a module of exfiqa_jax/tasks with `run(config) -> dict`, so tests call it directly.
"""
from __future__ import annotations

import importlib
import logging as std_logging
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from exfiqa_jax import compile_cache
from exfiqa_jax.tasks import TASKS

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a configs/*.py file.",
                                          lock_config=True)


_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class OwnInfoOnly(std_logging.Filter):
  """Warnings and errors from everyone, INFO only from this package: Orbax alone logs a dozen
  INFO lines for every checkpoint it reads, TFDS and JAX a few per data set and backend."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE)


def quiet_third_party() -> None:
  """Installs OwnInfoOnly on absl's handler unless --verbosity (-v) was given: asking for a
  level shows every package's messages at it."""
  if not flags.FLAGS["verbosity"].present:
    logging.get_absl_handler().addFilter(OwnInfoOnly())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}; pass settings as --config.<field>=")
  quiet_third_party()
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("pass --config=configs/<job>.py (e.g. configs/demo.py)")
  if config.task not in TASKS:
    raise app.UsageError(f"unknown task {config.task!r}; known: {sorted(TASKS)}")
  if config.get("distributed", False):
    jax.distributed.initialize()
  compile_cache.setup(config.get("compile_cache", ""))    # before anything compiles
  logging.info("task %s: process %d of %d, %d local / %d global devices (%s)", config.task,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform)
  importlib.import_module(TASKS[config.task]).run(config)


def run_main() -> None:
  """Console-script entry point (`exfiqa`)."""
  jax.config.config_with_absl()
  app.run(main)
