"""Runs Python code in a fresh interpreter with N simulated CPU devices."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout


def run_python(code: str, devices: int = 8, env: dict | None = None,
               timeout: float = 600) -> str:
  """Runs `code` with `devices` host devices; returns stdout, raises with stderr on failure."""
  full_env = dict(os.environ)
  full_env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  full_env["JAX_PLATFORMS"] = "cpu"
  full_env.update(env or {})
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                        text=True, env=full_env, cwd=ROOT, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
  return proc.stdout
