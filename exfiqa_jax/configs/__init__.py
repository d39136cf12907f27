"""The job configs, shipped inside the package so that they work from any folder after
`pip install`: `exfiqa --config=demo` runs exfiqa_jax/configs/demo.py (exfiqa_jax/cli.py
resolves the name; `--config=score:size=tiny` passes the argument; a path runs the user's own
file). A checkout's configs/<name>.py re-exports the same module, so the documented
`python main.py --config=configs/demo.py` is this config too. docs/configs.md documents the
fields.

Configs import ml_collections, each other and pure-Python exfiqa_jax modules, never JAX: loading
one is instant (tests/test_configs.py).
"""
from __future__ import annotations

import pathlib

DIRECTORY = pathlib.Path(__file__).resolve().parent
SHARED = ("common", "eval_common")    # the configs' building blocks: no get_config, not jobs


def names() -> tuple[str, ...]:
  """The packaged configs a bare `--config=<name>` can pick, sorted."""
  return tuple(sorted(p.stem for p in DIRECTORY.glob("*.py")
                      if not p.stem.startswith("_") and p.stem not in SHARED))


def path(name: str) -> pathlib.Path:
  """The file of the packaged config `name` (one of names())."""
  return DIRECTORY / f"{name}.py"
