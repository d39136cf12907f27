"""The command line: main.py and the `exfiqa` console script are the same entry point; a bad
call says which flag fixes it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _run(*argv: str) -> subprocess.CompletedProcess:
  return subprocess.run(list(argv), cwd=ROOT, capture_output=True, text=True, env=ENV,
                        timeout=300)


def test_main_without_config_is_a_usage_error():
  proc = _run(sys.executable, "main.py")
  assert proc.returncode != 0 and "pass --config=configs/<job>.py" in proc.stderr


@pytest.mark.parametrize("entry", ["main.py", "exfiqa"])
def test_missing_input_names_the_flag(entry, tmp_path):
  exe = shutil.which("exfiqa", path=os.path.dirname(sys.executable))
  argv = [sys.executable, "main.py"] if entry == "main.py" else [exe]
  if entry == "exfiqa" and exe is None:
    pytest.skip("console script not installed (pip install -e .)")
  proc = _run(*argv, "--config=configs/score.py:size=tiny", f"--config.output={tmp_path}")
  assert proc.returncode != 0
  assert "--config.quality_model.path" in proc.stderr and "--config.images" in proc.stderr
  assert "devices" in proc.stderr                 # the process / device line is logged
