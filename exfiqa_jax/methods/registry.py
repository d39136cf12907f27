"""The quality methods by name, their options with the official defaults, and how a checkpoint
entry names its method: the vocabulary of `fx.load(path, method=...)` and
`--config.quality_model.method` (docs/methods.md, Baselines).

Pure Python, no JAX (configs import it). The scorers (methods/<name>.py) take the options below
as keyword arguments with these defaults (tests/test_inference.py checks that they agree).
"""
from __future__ import annotations

import re
from typing import Any, Mapping

CRFIQA, EDIFFIQA, MAGFACE, SERFIQ, GRAFIQS, VITNT = (
    "crfiqa", "ediffiqa", "magface", "serfiq", "grafiqs", "vitnt")
METHODS = (CRFIQA, EDIFFIQA, MAGFACE, SERFIQ, GRAFIQS, VITNT)
IMPLIED = ""          # what the checkpoint's family implies (ViT-FIQA: exits, fusions, ATTN)
# Not a method but an entry kind: `name=scores:<file>[#column][?lower]` brings another lab's
# quality scores as a column (exfiqa_jax/data/score_files.py; docs/evaluation.md).
SCORES = "scores"

# Every option of every method, with its official default (methods/<name>.py says what each
# means). Methods not listed take none.
OPTIONS: dict[str, dict[str, Any]] = {
    MAGFACE: dict(channel_order="rgb", any_family=False),
    SERFIQ: dict(passes=100, rate=0.5, seed=0, rescale=False, alpha=130.0, r=0.88, chunk=10),
    VITNT: dict(blocks=(), scaling=8.0, attention="last"),
}

# The method a checkpoint family implies when none is asked (family → method).
FAMILY_METHODS = {"crfiqa": CRFIQA, "ediffiqa": EDIFFIQA, "magface": MAGFACE}
# What applies to a plain iResNet / IR face-recognition model (no quality head).
FR_CNN_METHODS = (SERFIQ, GRAFIQS, f"{MAGFACE} (any_family=True: embedding_norm)")

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")          # C:\... or C:/...: a Windows path, not a method
_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_]+):(.*)$")


def check_method(method: str | None, flag: str = "method=") -> str:
  """"" (None) or one of METHODS; anything else is a ValueError naming `flag` and the methods."""
  method = str(method or "").strip()
  if method and method not in METHODS:
    raise ValueError(f"{flag}{method!r} is not a quality method; use one of {list(METHODS)}, or "
                     "\"\" for what the checkpoint implies (docs/methods.md, Baselines)")
  return method


def options(method: str, given: Mapping[str, Any] | None = None,
            flag: str = "method=") -> dict[str, Any]:
  """The method's options: its official defaults updated by `given`; an option the method does
  not take is a ValueError listing the ones it does."""
  defaults = OPTIONS.get(method, {})
  given = dict(given or {})
  unknown = sorted(set(given) - set(defaults))
  if unknown:
    takes = f"takes {sorted(defaults)}" if defaults else "takes no options"
    raise ValueError(f"{flag}{method or repr(IMPLIED)} {takes}; got {unknown}")
  out = {**defaults, **given}
  if "blocks" in out:                           # a config tuple, list or "" → a tuple of ints
    out["blocks"] = tuple(int(b) for b in (out["blocks"] or ()))
  return out


def split_method(entry: str) -> tuple[str, str]:
  """"method:path" → (method, path), "scores:file" → (SCORES, file); a plain path (a Windows
  drive "C:\\..." included) → ("", path). A prefix that names no method is a ValueError listing
  the methods."""
  entry = str(entry).strip()
  match = None if _DRIVE.match(entry) else _PREFIX.match(entry)
  if match is None:
    return "", entry
  method, path = match.group(1), match.group(2).strip()
  if method not in METHODS + (SCORES,):
    raise ValueError(f"{entry!r}: {method!r} is not a quality method; write [name=][method:]path "
                     f"with a method of {list(METHODS)}, or name={SCORES}:<file> for a score "
                     f"file (a path containing ':' as ./{entry})")
  return method, path


def resolve_entry(entry: str, method: str = "", flag: str = "method=") -> tuple[str, str]:
  """A checkpoint entry "[method:]path" and the default method → (method, path); the entry's
  own method wins; either is checked (errors name `flag`)."""
  entry_method, path = split_method(entry)
  if entry_method == SCORES:
    raise ValueError(f"{entry!r}: a score file is an evaluation column (the eval and early_exit "
                     "jobs' --config.quality_model.path=name=scores:<file>), not a model to load")
  return check_method(entry_method or method, flag), path


def config_options(quality_model: Any) -> dict[str, dict[str, Any]]:
  """The per-method option tables of a job config's `quality_model` (configs/common.py):
  {method: {option: value}} for `inference.load(..., method_options=...)`."""
  return {name: {k: v for k, v in quality_model[name].items()}
          for name in OPTIONS if name in quality_model}


def identity(method: str, tables: Mapping[str, Mapping[str, Any]] | None = None
             ) -> dict[str, Any]:
  """What a cache identity records of an asked method and the option tables (`config_options`):
  {} for "" with every option at its default (identities written before methods existed stay
  valid); else the method and the options that apply — the method's own, or for "" the tables
  of the methods "" can imply (magface, vitnt) that differ from their defaults."""
  tables = dict(tables or {})
  if method:
    return {"method": method, "options": options(method, tables.get(method, {}))}
  implied = set(FAMILY_METHODS.values()) | {VITNT}     # what "" can turn into
  changed = {name: options(name, table) for name, table in tables.items()
             if name in implied and options(name, table) != options(name)}
  return {"method": IMPLIED, "options": changed} if changed else {}
