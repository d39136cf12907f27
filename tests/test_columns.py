"""columns.py: the quality-column names, built and parsed in one place."""
from __future__ import annotations

from exfiqa_jax import columns


def test_names():
  assert columns.exit_name(3) == "exit_3" and columns.attn_name(1) == "attn_1"
  assert columns.q100_name(columns.exit_name(2)) == "q100_exit_2"
  assert columns.score_names(2) == ["exit_1", "exit_2", "ex_fiqa_f", "ex_fiqa_fw", "attn_1",
                                    "attn_2"]
  assert columns.score_names(2, has_exits=False) == ["attn_1", "attn_2"]
  assert columns.with_model("t", "exit_1") == "t/exit_1"


def test_parsing():
  assert columns.exit_of("exit_12") == 12 and columns.exit_of("t/exit_2") == 2
  assert columns.exit_of(columns.EX_FIQA_F) is None and columns.exit_of("exit_x") is None
  assert columns.is_exit("exit_1") and not columns.is_exit("attn_1")
  assert columns.base_name("t/ex_fiqa_fw") == "ex_fiqa_fw"
  assert columns.base_name("random") == "random"
