"""Table writers every report shares: CSV text with exact numbers, scores.csv, markdown tables.

Numbers are written exactly as the engine produced them (float repr round-trips bit for bit), so
a CSV equals the arrays it came from; scores.csv keeps 9 significant digits (docs/evaluation.md,
"scores.csv").
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from exfiqa_jax import columns, files


def number_text(v: Any) -> str:
  """Exact text for a number (float repr round-trips bit for bit; NaN as "nan")."""
  if isinstance(v, (int, np.integer)):
    return str(int(v))
  v = float(v)
  return "nan" if math.isnan(v) else repr(v)


def csv_text(rows: Iterable[Mapping[str, Any]], header: Sequence[str]) -> str:
  """CSV text of `rows` in `header` order: strings as they are, numbers exact (number_text)."""
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(header)
  for row in rows:
    writer.writerow([row[c] if isinstance(row[c], str) else number_text(row[c]) for c in header])
  return buf.getvalue()


def write_csv(path: str, rows: Iterable[Mapping[str, Any]], header: Sequence[str]) -> str:
  """csv_text written atomically; returns `path`."""
  files.write_text(path, csv_text(rows, header))
  return path


def read_csv(path: str) -> list[dict[str, str]]:
  """Rows of a CSV with a header, as {column: text}."""
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def score_header(num_exits: int, has_exits: bool) -> list[str]:
  """scores.csv's header: image, then the model's quality columns (exfiqa_jax/columns.py)."""
  return [columns.IMAGE] + columns.score_names(num_exits, has_exits)


def score_table(names: Sequence[str], scores: Mapping[str, np.ndarray], has_exits: bool,
                extra: Mapping[str, np.ndarray] | None = None) -> str:
  """scores.csv text in the contract's column order (floats with 9 significant digits): a
  ViT's exit, fusion and attn columns, then the methods' columns in `scores` ({name: [N]},
  columns.METHOD_COLUMNS order; a method model has only these); `extra` columns ({name: [N]},
  e.g. the 0–100 values q100_exit_1.., exfiqa_jax/calibrate/) are appended in their order."""
  num_exits = scores["attn_scores"].shape[1] if "attn_scores" in scores else 0
  methods = columns.method_names(scores)
  extra = dict(extra or {})
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(score_header(num_exits, has_exits) + methods + list(extra))
  for i, name in enumerate(names):
    row = []
    if has_exits:
      row += list(scores["exit_scores"][i]) + [scores[f][i] for f in columns.FUSIONS]
    row += list(scores["attn_scores"][i]) if num_exits else []
    row += [scores[c][i] for c in methods] + [v[i] for v in extra.values()]
    writer.writerow([name] + [f"{float(v):.9g}" for v in row])
  return buf.getvalue()


def markdown_row(cells: Sequence[Any]) -> str:
  """| a | b | c |"""
  return "| " + " | ".join(str(c) for c in cells) + " |"


def markdown_table(header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> list[str]:
  """A markdown table's lines: the header, the rule, one line per row."""
  return [markdown_row(header), "|" + "---|" * len(header)] + [markdown_row(r) for r in rows]
