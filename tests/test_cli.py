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


def test_third_party_info_stays_out_unless_asked(tmp_path):
  """Orbax logs a dozen INFO lines per checkpoint read; a user sees the toolkit's own INFO lines
  and everyone's warnings, and every package's INFO with --verbosity=0."""
  import numpy as np
  from PIL import Image
  from exfiqa_jax.testing import worlds
  model = worlds.save_vit(tmp_path / "model", "token", 0)        # an Orbax directory
  faces = tmp_path / "faces"
  faces.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), np.uint8)).save(faces / f"{i}.png")
  argv = [sys.executable, "main.py", "--config=configs/score.py:size=tiny",
          f"--config.quality_model.path={model}", f"--config.images={faces}"]
  quiet = _run(*argv, f"--config.output={tmp_path / 'a'}")
  loud = _run(*argv, f"--config.output={tmp_path / 'b'}", "--verbosity=0")
  assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr[-3000:]
  assert "task score:" in quiet.stderr and "task score:" in loud.stderr

  def foreign_info(stderr: str) -> list[str]:      # absl lines name the file: Orbax's, JAX's
    return [ln for ln in stderr.splitlines() if ln[:1] == "I" and any(
        f" {m}.py:" in ln for m in ("checkpoint", "checkpointer", "event_tracking",
                                   "xla_bridge"))]

  assert len(foreign_info(loud.stderr)) >= 5
  assert foreign_info(quiet.stderr) == []
