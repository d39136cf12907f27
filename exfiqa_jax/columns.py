"""The quality-column vocabulary: the one owner of the names scores.csv, the evaluation tables,
the early-exit summary and the 0–100 mapping use for a quality score (docs/evaluation.md).

  exit_k        the quality head after block k (1-based, k = 1..L)
  ex_fiqa_f     EX-FIQA-F, the mean of all exits
  ex_fiqa_fw    EX-FIQA-FW, the depth-weighted mean of all exits
  ex_fiqa_fit   the exits fused with weights learned on a calibration split (early_exit job)
  attn_k        the attention-based score of block k (every ViT, with or without exit heads)
  q100_<col>    <col> on the 0–100 scale of the model directory's quality mapping
  random        the seeded random baseline (evaluation)
  oracle        the synthetic worlds' known-severity baseline (demo)
  crfiqa        CR-FIQA's qs head (docs/methods.md, Baselines; as are the next three)
  ediffiqa      eDifFIQA's MLP head
  magface       the norm of a MagFace model's unnormalised embedding
  embedding_norm  the same norm on an FR model not trained with MagFace's loss
  serfiq        SER-FIQ's stochastic-embedding robustness (docs/methods.md, Baselines; as are the
                next three)
  grafiqs_image, grafiqs_block1..4  GraFIQs' gradient magnitudes, negated (higher = better)
  vitnt         ViTNT-FIQA, attention-weighted over patches
  vitnt_uniform ViTNT-FIQA, uniform mean over patches
  <model>/<col> <col> of one quality model when an evaluation compares several

Pure Python (configs may import it).
"""
from __future__ import annotations

from typing import Iterable

EXIT_PREFIX = "exit_"
ATTN_PREFIX = "attn_"
Q100_PREFIX = "q100_"
EX_FIQA_F = "ex_fiqa_f"
EX_FIQA_FW = "ex_fiqa_fw"
EX_FIQA_FIT = "ex_fiqa_fit"     # not a model output: fitted by calibrate/fusion_fit.py
FUSIONS = (EX_FIQA_F, EX_FIQA_FW)
RANDOM = "random"
ORACLE = "oracle"
CRFIQA = "crfiqa"
EDIFFIQA = "ediffiqa"
MAGFACE = "magface"
EMBEDDING_NORM = "embedding_norm"
SERFIQ = "serfiq"
GRAFIQS = ("grafiqs_image", "grafiqs_block1", "grafiqs_block2", "grafiqs_block3",
           "grafiqs_block4")
VITNT = "vitnt"
VITNT_UNIFORM = "vitnt_uniform"
# The methods' columns (the baselines' and ViTNT-FIQA), in the order scores.csv and the
# evaluation tables list them after a model's exit, fusion and attn columns.
METHOD_COLUMNS = ((CRFIQA, EDIFFIQA, MAGFACE, EMBEDDING_NORM, SERFIQ) + GRAFIQS
                  + (VITNT, VITNT_UNIFORM))
IMAGE = "image"                 # the first column of scores.csv: the image's name
MODEL_SEPARATOR = "/"


def exit_name(k: int) -> str:
  """exit_k: the 1-based exit k's column."""
  return f"{EXIT_PREFIX}{int(k)}"


def attn_name(k: int) -> str:
  """attn_k: block k's (1-based) attention-score column."""
  return f"{ATTN_PREFIX}{int(k)}"


def q100_name(column: str) -> str:
  """q100_<column>: `column` on the 0–100 scale."""
  return Q100_PREFIX + column


def exit_names(num_exits: int) -> list[str]:
  """exit_1..exit_L."""
  return [exit_name(k) for k in range(1, num_exits + 1)]


def attn_names(num_exits: int) -> list[str]:
  """attn_1..attn_L."""
  return [attn_name(k) for k in range(1, num_exits + 1)]


def score_names(num_exits: int, has_exits: bool = True) -> list[str]:
  """A model's quality columns in scores.csv order: exit_1..exit_L, ex_fiqa_f, ex_fiqa_fw,
  attn_1..attn_L; only attn_1..attn_L for models without exit heads (mode "fr")."""
  if not has_exits:
    return attn_names(num_exits)
  return exit_names(num_exits) + list(FUSIONS) + attn_names(num_exits)


def method_names(present: Iterable[str]) -> list[str]:
  """The method columns among `present` (names or a mapping's keys), in METHOD_COLUMNS order."""
  present = set(present)
  return [c for c in METHOD_COLUMNS if c in present]


def with_model(model: str, column: str) -> str:
  """<model>/<column>: a column of one of several quality models."""
  return f"{model}{MODEL_SEPARATOR}{column}"


def base_name(column: str) -> str:
  """The column name without its model prefix (<model>/exit_3 → exit_3)."""
  return column.rsplit(MODEL_SEPARATOR, 1)[-1]


def exit_of(column: str) -> int | None:
  """k for an exit_k column (with or without a model prefix), else None."""
  name = base_name(column)
  if name.startswith(EXIT_PREFIX) and name[len(EXIT_PREFIX):].isdigit():
    return int(name[len(EXIT_PREFIX):])
  return None


def is_exit(column: str) -> bool:
  """True for an exit_k column (with or without a model prefix)."""
  return exit_of(column) is not None
