"""Attention examples for the report: per benchmark and quality model, the highest- and
lowest-quality images with their last block's attention maps (docs/methods.md, "ATTN-FIQA").

Runs the quality model again on those few images (the stages keep no attention maps); the
report (exfiqa_jax/report/evaluation.py) draws the overlays.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from exfiqa_jax.evaluation.benchmarks import Benchmark
from exfiqa_jax.evaluation.pipeline import EvalRun, QualitySpec


@dataclasses.dataclass
class AttentionExample:
  benchmark: str
  model: str
  images: np.ndarray        # [K, S, S, 3] uint8: the highest-quality images, then the lowest
  maps: np.ndarray          # [K, N] the last block's attention over the N patches
  scores: np.ndarray        # [K] quality: the last exit (the last ATTN for mode "fr" models)
  labels: list[str]         # "high #1".., "low #k"..


def examples(run: EvalRun, benchmarks: Sequence[Benchmark], quality: Sequence[QualitySpec],
             count: int) -> list[AttentionExample]:
  """The `count` highest- and lowest-quality images per benchmark × quality model (none when
  count ≤ 0 or on several hosts: every image would have to be gathered)."""
  if count <= 0 or jax.process_count() > 1:
    return []
  out = []
  for bench in benchmarks:
    for spec in quality:
      st = run.quality[bench.name][spec.name]
      if "attn_scores" not in st.arrays:      # a quality method: no attention to draw
        continue
      q = st["exit_scores"][:, -1] if "exit_scores" in st.arrays else st["attn_scores"][:, -1]
      order = np.argsort(-q, kind="stable")
      k = min(count, len(q) // 2)
      rows = np.concatenate([order[:k], order[::-1][:k][::-1]])
      images, _ = bench.read(rows)
      maps = spec.model.score(images, attn_maps=True)["attn_maps"][:, -1]
      n = maps.shape[-1]
      if int(round(np.sqrt(n))) ** 2 != n:       # a quality token first: keep the patches
        maps = maps[:, 1:]
      labels = [f"high #{i + 1}" for i in range(k)] + [f"low #{k - i}" for i in range(k)]
      out.append(AttentionExample(bench.name, spec.name, images, maps, q[rows], labels))
  return out
