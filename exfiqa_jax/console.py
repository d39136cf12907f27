"""What the command-line programs print: every package's warnings, INFO only from this one.

Orbax alone logs a dozen INFO lines for every checkpoint it reads or writes (reprs such as
`Closing _NonBlockingMetadataStore(...)`), TFDS and JAX a few per data set and backend; the
toolkit's own progress lines stay. `exfiqa` / main.py (cli.py) and the converters (convert_cli.py)
install the same filter; `--verbosity=0` (or -v) shows everything again.
"""
from __future__ import annotations

import logging as std_logging
import os

from absl import flags, logging

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class OwnInfoOnly(std_logging.Filter):
  """Passes warnings and errors from everyone, INFO and below only from files of this package."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or record.pathname.startswith(_PACKAGE)


def quiet_third_party(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Installs OwnInfoOnly on absl's handler unless --verbosity (-v) was given: asking for a
  level shows every package's messages at it. Call after the flags are parsed (in main)."""
  if not flag_values["verbosity"].present:
    logging.get_absl_handler().addFilter(OwnInfoOnly())
