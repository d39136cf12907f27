"""What the command lines print: warnings from everyone, INFO only from this package, unless
--verbosity asks for more (exfiqa_jax/console.py; main.py and the converters run end to end in
tests/test_cli.py and tests/test_converters.py)."""
from __future__ import annotations

import logging
import os

import pytest
from absl import flags
from absl import logging as absl_logging

import exfiqa_jax
from exfiqa_jax import console

OWN = os.path.join(os.path.dirname(exfiqa_jax.__file__), "checkpoints.py")
ORBAX = "/site-packages/orbax/checkpoint/_src/metadata/checkpoint.py"


def _record(level: int, pathname: str) -> logging.LogRecord:
  return logging.LogRecord("absl", level, pathname, 459, "Closing %s", ("store",), None)


def test_own_info_passes_and_third_party_info_does_not():
  keep = console.OwnInfoOnly().filter
  assert keep(_record(logging.INFO, OWN))
  assert not keep(_record(logging.INFO, ORBAX))
  assert not keep(_record(logging.DEBUG, ORBAX))
  assert keep(_record(logging.WARNING, ORBAX)) and keep(_record(logging.ERROR, ORBAX))
  # a package beside this one whose path starts alike is not this package
  assert not keep(_record(logging.INFO, os.path.dirname(exfiqa_jax.__file__) + "_extra/x.py"))


@pytest.mark.parametrize("argv, quiet", [(["prog"], True), (["prog", "--verbosity=0"], False)])
def test_the_filter_is_installed_unless_verbosity_is_given(argv, quiet):
  values = flags.FlagValues()
  flags.DEFINE_integer("verbosity", -1, "", flag_values=values)
  values(argv)
  handler = absl_logging.get_absl_handler()
  before = list(handler.filters)
  try:
    console.quiet_third_party(values)
    added = [f for f in handler.filters if f not in before]
    assert [type(f) for f in added] == ([console.OwnInfoOnly] if quiet else [])
  finally:
    for f in [f for f in handler.filters if f not in before]:
      handler.removeFilter(f)
