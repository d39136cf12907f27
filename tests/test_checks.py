"""evaluation/checks.py: what an evaluation refuses before any stage runs, naming the flag."""
from __future__ import annotations

import numpy as np
import pytest

from configs import eval_verification
from exfiqa_jax.evaluation import benchmarks, checks


def _toy(tmp_path):
  """A 40-image benchmark without identity labels, and an eval config for it."""
  rng = np.random.default_rng(3)
  ident = np.repeat(np.arange(10), 4)
  pairs = rng.integers(0, 40, (100, 2))
  bench = benchmarks.array_benchmark("toy", np.zeros((40, 112, 112, 3), np.uint8),
                                     [f"i{k}" for k in range(40)], pairs,
                                     ident[pairs[:, 0]] == ident[pairs[:, 1]])
  config = eval_verification.get_config("benchmarks=toy,size=tiny")
  config.output = str(tmp_path)
  return bench, config


def test_a_sound_config_passes(tmp_path):
  bench, config = _toy(tmp_path)
  checks.check_eval_config(config)
  checks.check_protocol(bench)
  assert checks.bootstrap_unit(bench, config) == "pair"
  assert checks.bootstrap_units(bench, "pair") is None


@pytest.mark.parametrize("field,value,match", [
    ("alpha", 2.0, "--config.eval.alpha"),
    ("bootstrap_unit", "identity", "bootstrap_unit=identity"),
    ("bootstrap_unit", "template", "bootstrap_unit=template"),
    ("bootstrap_unit", "subject", "bootstrap_unit='subject'")])
def test_eval_settings_fail_naming_their_flag(tmp_path, field, value, match):
  bench, config = _toy(tmp_path)
  config.eval[field] = value
  with pytest.raises(ValueError, match=match):
    checks.check_eval_config(config)
    checks.bootstrap_unit(bench, config)
