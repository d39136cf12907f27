"""Other labs' quality scores as evaluation columns (docs/evaluation.md, "Compare with other
methods").

An entry `name=scores:<file>[#column][?lower]` of --config.quality_model.path is read once when
the job starts (its bytes hashed as they are read: exfiqa_jax/data/score_files.py) and matched
to every benchmark's image names before any stage runs, so a missing, duplicated or ambiguous
name, or a NaN, fails in seconds, not after hours of scoring. Its column enters the EDC stages
like a quality model's (kind "external"); IJB-C turns its image scores into template and pair
quality by the same rule. The file's digest, the column read and the direction are part of the
stages' identity: a changed file recomputes them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from exfiqa_jax import columns
from exfiqa_jax.data import score_files

FLAG = "--config.quality_model.path="
LOWER_FLAG = "--config.quality_model.lower_is_better="
KIND = "external"


@dataclasses.dataclass(frozen=True)
class ExternalScores:
  """One score file as a quality column `name`."""
  name: str
  entry: score_files.ScoreEntry
  file: score_files.ScoreFile

  def identity(self) -> dict[str, Any]:
    """What the stages that use this column record of it (the file's content digest, format,
    column and direction)."""
    return score_files.identity(self.entry, self.file)

  def summary(self) -> dict[str, Any]:
    """What summary.json says of it."""
    return {"path": self.file.path, **self.identity()}

  def image_quality(self, bench_name: str, image_names: Sequence[str]) -> np.ndarray:
    """float32 [I] quality of the benchmark's images in their order (higher = better)."""
    return score_files.image_quality(
        self.entry, self.file, image_names,
        f"{FLAG}{self.name}={entry_text(self.entry)} on {bench_name}")


def entry_text(entry: score_files.ScoreEntry) -> str:
  """The entry as the user writes it: scores:<file>[#column][?lower]."""
  return (f"scores:{entry.path}" + (f"#{entry.column}" if entry.column else "")
          + ("?lower" if entry.lower_is_better else ""))


def read(name: str, text: str, lower_names: Sequence[str] = ()) -> ExternalScores:
  """The score file of entry `name=scores:<text>`, read once; `lower_names` are the entries
  --config.quality_model.lower_is_better names (the same as writing `?lower`)."""
  check_name(name)
  entry = score_files.parse_entry(text)
  if name in lower_names and not entry.lower_is_better:
    entry = dataclasses.replace(entry, lower_is_better=True)
  return ExternalScores(name, entry, score_files.read_score_file(entry.path, entry.column))


def lower_names(value: str, names: Sequence[str]) -> list[str]:
  """The names of --config.quality_model.lower_is_better (comma list); a name that is no score
  file entry is a ValueError listing the ones there are."""
  out = [v.strip() for v in str(value or "").split(",") if v.strip()]
  unknown = [n for n in out if n not in names]
  if unknown:
    raise ValueError(f"{LOWER_FLAG}{value!r}: {unknown} name no score file entry of "
                     f"{FLAG} (score files: {list(names) or 'none'})")
  return out


def check_name(name: str) -> str:
  """A score file's column name: not a name the toolkit's own columns use (exfiqa_jax/
  columns.py), no '/' (the <model>/<column> separator)."""
  reserved = ({columns.RANDOM, columns.ORACLE, columns.EX_FIQA_FIT, *columns.FUSIONS,
               *columns.METHOD_COLUMNS} | {columns.IMAGE})
  own = (name in reserved or columns.is_exit(name) or name.startswith(columns.Q100_PREFIX)
         or (name.startswith(columns.ATTN_PREFIX) and name[len(columns.ATTN_PREFIX):].isdigit()))
  if own or columns.MODEL_SEPARATOR in name or not name:
    raise ValueError(f"{FLAG}{name}=scores:...: {name!r} cannot name a score file (it is one of "
                     "the toolkit's own quality columns, empty, or contains '/'); name it "
                     "differently, e.g. ofiq=scores:ofiq.csv")
  return name
