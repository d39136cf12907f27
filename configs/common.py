"""Defaults shared by every job config (one place per fact)."""
from __future__ import annotations

import ml_collections


def base_config(task: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.task = task
  config.output = "out/" + task
  config.seed = 0
  config.distributed = False        # True on every host of a TPU pod slice / multi-host job
  config.batch_size = 64            # global; rounded up to a multiple of the device count
  return config
