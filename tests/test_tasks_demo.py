"""The embedded default end to end on its smoke size: every file, the severity correlations, the
target check, and a rerun that recomputes nothing and keeps the computing run's time line."""
from __future__ import annotations

import json
import os

import pytest

from configs import demo as demo_config
from exfiqa_jax.report import tables
from exfiqa_jax.tasks import demo


def _config(output):
  config = demo_config.get_config("size=smoke")
  config.output = str(output)
  config.progress = False
  config.train.progress = False
  return config


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  output = tmp_path_factory.mktemp("demo")
  return output, demo.run(_config(output))


def test_every_file_and_summary(demo_run):
  output, result = demo_run
  for name in ("edc.csv", "pauc.csv", "summary.json", "summary.md",
               "synthetic_faces/scores_vitfiqa_tiny.csv", "train/model/model_config.json",
               "train/train_log.csv", "plots/edc_synthetic_faces_quality_model_fiqa.png",
               "plots/edc_synthetic_faces_quality_model_fiqa.pdf",
               "plots/attention_synthetic_faces_vitfiqa_tiny.png", "timings.json"):
    assert os.path.getsize(output / name) > 0, name
  summary = json.loads((output / "summary.json").read_text())
  names = [r["quality"] for r in tables.read_csv(output / "pauc.csv")]
  assert set(summary["spearman_vs_severity"]) == set(names)
  assert {"random", "oracle", "exit_1", "exit_2", "ex_fiqa_f", "attn_1"} <= set(names)
  # The oracle is minus the severity itself: its rank correlation is exactly 1.
  assert summary["spearman_vs_severity"]["oracle"] == pytest.approx(1.0)
  t = summary["targets"]
  assert t["best_exit"].startswith("exit_") and isinstance(t["met"], bool)
  rows = {(r["quality"], r["mode"], float(r["fmr"])): float(r["pauc"])
          for r in tables.read_csv(output / "pauc.csv")}
  assert t["ratio_to_random"] == pytest.approx(
      rows[(t["best_exit"], "fiqa", 1e-3)] / rows[("random", "fiqa", 1e-3)], abs=1e-4)
  md = (output / "summary.md").read_text()
  assert "Spearman(quality, -severity)" in md and "Targets" in md


def _time_line(output) -> str:
  return next(l for l in (output / "summary.md").read_text().splitlines()
              if l.startswith("Time: "))


def test_rerun_recomputes_nothing(demo_run):
  output, first = demo_run
  line = _time_line(output)
  assert "cached rerun" not in line and line.endswith(").")
  again = demo.run(_config(output))
  assert again["computed"] == []
  assert again["spearman_vs_severity"] == first["spearman_vs_severity"]
  # The time line keeps the computing run's seconds and adds the rerun's own.
  rerun = _time_line(output)
  assert rerun.startswith(line[:-1] + ", each part as long as the run that computed it took "
                          "(cached rerun: ")
  assert rerun.endswith(f"(cached rerun: {again['seconds']['total']:.0f} s).")
  summary = json.loads((output / "summary.json").read_text())
  assert summary["seconds"] == first["seconds"] and summary["seconds_this_run"] == again["seconds"]
