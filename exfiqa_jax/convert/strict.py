"""Strict checkpoint checking: every problem is reported at once, never a silent partial load.

The official ATTN-FIQA code loads with `strict=False` and can leave weights random; here any
missing, unexpected or mis-shaped key (and a non-integer `num_batches_tracked`) is one
`CheckpointError` that lists them all, so a user fixes a checkpoint in one round.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Mapping

import numpy as np

_MAX_LISTED = 40   # per category; a whole wrong model would otherwise print hundreds of keys


class CheckpointError(ValueError):
  """A checkpoint that does not match the model it is loaded into, or cannot be read safely."""


# How a message names the setting that fixes it, in the language of the entry point that runs:
# the converter CLIs by default (`--family=`), the Python API `family=`, a main.py task
# `--config.quality_model.family=` (see `flags_named`).
_DEFAULT_FLAGS = {"family": "--family=", "num_heads": "--num_heads="}
_FLAG_NAMES: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar(
    "checkpoint_flag_names", default={})


def flag(name: str) -> str:
  """The current entry point's spelling of setting `name` ("family" | "num_heads"), e.g.
  "--config.fr.family=" inside the eval task; messages append the value."""
  return _FLAG_NAMES.get().get(name) or _DEFAULT_FLAGS.get(name, f"{name}=")


@contextlib.contextmanager
def flags_named(outer_wins: bool = False, **names: str):
  """Within the block, checkpoint errors name the settings as `names` spells them. With
  `outer_wins` (library entry points such as `inference.load`), names an enclosing block set
  (a main.py task) are kept."""
  current = _FLAG_NAMES.get()
  merged = {**names, **current} if outer_wins else {**current, **names}
  token = _FLAG_NAMES.set(merged)
  try:
    yield
  finally:
    _FLAG_NAMES.reset(token)


def _listing(title: str, items: list[str]) -> str:
  shown = items[:_MAX_LISTED]
  more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
  return f"  {title} ({len(items)}):\n" + "".join(f"    {s}\n" for s in shown) + more


def check_state_dict(expected: Mapping[str, tuple], state_dict: Mapping[str, Any],
                     hint: str = "") -> None:
  """Raises CheckpointError listing ALL missing, unexpected and mis-shaped keys.

  `expected` maps torch key → shape. Keys ending in `num_batches_tracked` must also hold an
  integer scalar (torch's int64 BN counter). `hint` is appended to the message (how to fix).
  """
  missing = [k for k in expected if k not in state_dict]
  unexpected = sorted(k for k in state_dict if k not in expected)
  misshaped, mistyped = [], []
  for k, shape in expected.items():
    if k not in state_dict:
      continue
    got = tuple(np.shape(state_dict[k]))
    if got != tuple(shape):
      misshaped.append(f"{k}: checkpoint {list(got)}, model expects {list(shape)}")
    elif k.endswith("num_batches_tracked"):
      dtype = np.asarray(state_dict[k]).dtype
      if not np.issubdtype(dtype, np.integer):
        mistyped.append(f"{k}: {dtype}, expected an integer scalar (int64)")
  if not (missing or unexpected or misshaped or mistyped):
    return
  parts = ["checkpoint does not match the model:\n"]
  if missing:
    parts.append(_listing("missing keys", missing))
  if unexpected:
    parts.append(_listing("unexpected keys", unexpected))
  if misshaped:
    parts.append(_listing("mis-shaped keys", misshaped))
  if mistyped:
    parts.append(_listing("wrong dtype", mistyped))
  parts.append(hint or "Check that the checkpoint is the model you mean (family, mode, "
               "number of blocks) and that it was saved completely.")
  raise CheckpointError("".join(parts))
