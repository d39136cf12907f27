"""Task "early_exit" end to end on configs/early_exit.py:size=smoke with a tiny random ViT-FIQA:
every output, their consistency, the cascade's calibration-split agreement, the engine's
decisions against the prediction, and the score task's 0–100 columns from the stored mapping."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from configs import early_exit as early_exit_config
from configs import score as score_config
from exfiqa_jax import models
from exfiqa_jax.report import tables
from exfiqa_jax import quality_mapping
from exfiqa_jax.tasks import early_exit, score
from exfiqa_jax.testing import worlds


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("early_exit")
  model = worlds.save_vit(root / "model", "token", 0)
  config = early_exit_config.get_config("size=smoke")
  config.quality_model.path = model
  config.output = str(root / "out")
  config.progress = False
  return root, config, early_exit.run(config)


def test_outputs_exist_and_agree(run):
  root, config, result = run
  out = root / "out"
  for name in ("early_exit.csv", "early_exit.json", "early_exit.md", "quality_mapping.json",
               "plots/early_exit_pauc_vs_gflops.png", "plots/early_exit_decided.png"):
    assert os.path.getsize(out / name) > 0, name
  summary = json.loads((out / "early_exit.json").read_text())
  rows = tables.read_csv(str(out / "early_exit.csv"))
  targets = list(early_exit_config.TARGETS)
  assert [r["method"] for r in rows] == (
      ["exit_1", "exit_2", "exit_3", "ex_fiqa_f", "ex_fiqa_fw", "ex_fiqa_fit"]
      + [f"cascade@{t:g}" for t in targets])
  per_exit, fusion = models.gflops(json.loads((root / "model/model_config.json").read_text()))
  for r, j in zip(rows, summary["rows"]):
    assert float(r["mean_gflops"]) == pytest.approx(j["mean_gflops"])
    assert float(r["pauc"]) == pytest.approx(j["pauc"])
    decided = [float(r[f"decided_exit_{e}"]) for e in (1, 2, 3)]
    assert sum(decided) == pytest.approx(1.0)
    if r["kind"] == "exit":
      assert float(r["mean_gflops"]) == pytest.approx(per_exit[int(r["exits"]) - 1])
    if r["kind"] == "cascade":            # calibration meets its target on its own split
      assert float(r["agreement_calibration"]) >= float(r["target"])
      assert per_exit[0] <= float(r["mean_gflops"]) <= per_exit[-1] + 3 * (fusion - per_exit[-1])
    assert 0 <= float(r["agreement"]) <= 1 and float(r["images_per_second"]) > 0
  assert float(rows[2]["agreement"]) == 1.0                # exit L is the full-depth decision
  assert summary["timing"]["engine_vs_prediction_mismatches"] == {f"{t:g}": 0 for t in targets}
  assert summary["tau"]["discard_calibration"] == pytest.approx(0.2, abs=1 / 48)
  assert summary["headline"]["target"] == 0.99 and "compute saved" in summary["headline"]["text"]
  assert {"synthetic_faces_val", "synthetic_faces"} == {
      summary["benchmark"]["calibration"]["name"], summary["benchmark"]["evaluation"]["name"]}
  assert [p["target"] for p in summary["thresholds"]["discard"]] == [0.1, 0.2, 0.3]
  fit = summary["fusion_fit"]            # fitted on the calibration split, reported on the other
  assert fit["fitted_on"] == "synthetic_faces_val" and len(fit["weights"]) == 3
  assert min(fit["weights"]) >= 0 and sum(fit["weights"]) == pytest.approx(1.0, abs=1e-6)
  assert fit["surrogate_final"] <= fit["surrogate_initial"]


def test_mapping_stored_with_the_model_gives_score_columns(run, tmp_path):
  root, _, _ = run
  model = str(root / "model")
  mapping = quality_mapping.load_mapping(model)
  assert mapping is not None and mapping.kind == "quantile"
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (112, 112, 3), np.uint8)).save(tmp_path / f"{i}.png")
  cfg = score_config.get_config("size=tiny")
  cfg.quality_model.path, cfg.images, cfg.output = model, str(tmp_path), str(tmp_path / "o")
  cfg.progress = False
  score.run(cfg)
  rows = tables.read_csv(str(tmp_path / "o" / "scores.csv"))
  header = list(rows[0])
  base = tables.score_header(3, True)
  assert header[:len(base)] == base                     # the existing columns unchanged
  assert header[len(base):] == ["q100_exit_1", "q100_exit_2", "q100_exit_3", "q100_ex_fiqa_f",
                                "q100_ex_fiqa_fw"]
  for r in rows:
    for e in (1, 2, 3):
      expected = mapping.columns[f"exit_{e}"](float(r[f"exit_{e}"]))
      assert float(r[f"q100_exit_{e}"]) == pytest.approx(float(expected), abs=1e-4)
  cfg.quality_mapping = "none"
  score.run(cfg)                                        # the mapping is part of the identity
  assert list(tables.read_csv(str(tmp_path / "o" / "scores.csv"))[0]) == base


def test_rerun_recomputes_nothing(run):
  _, config, first = run
  again = early_exit.run(config)
  assert again["computed"] == []
  assert again["rows"] == first["rows"]


@pytest.mark.parametrize("method, kind", [("grafiqs", "fr"), ("vitnt", "model")])
def test_a_quality_method_is_refused(run, tmp_path, method, kind):
  """The study needs a ViT-FIQA model's exits: a method (a baseline on an FR CNN, or ViTNT on
  the ViT-FIQA model itself) is a clear error naming the flag, before any data work."""
  root, config, _ = run
  path = worlds.save_iresnet(tmp_path / "fr", 1) if kind == "fr" else config.quality_model.path
  bad = worlds.override(early_exit_config.get_config("size=smoke"),
                        **{"quality_model.path": path, "quality_model.method": method},
                        output=str(tmp_path / "out"), progress=False)
  with pytest.raises(ValueError, match=f"--config.quality_model.method={method} has none"):
    early_exit.run(bad)


def test_a_score_file_beside_the_baselines(run, tmp_path):
  """`name=scores:<file>` in the early_exit job: matched to the evaluation split's images, its
  pAUC reported beside random and the oracle — equal to the exit whose scores the file holds."""
  root, config, first = run
  with np.load(root / "out" / "cache" / "quality" / "synthetic_faces" / "model.npz") as stage:
    names, exit_2 = stage["name"], stage["exit_scores"][:, 1]
  (tmp_path / "ext.txt").write_text("".join(f"/data/{n} {float(v)!r}\n"
                                            for n, v in zip(names, exit_2)))
  cfg = worlds.override(early_exit_config.get_config("size=smoke"), **{
      "quality_model.path": f"{config.quality_model.path},ext=scores:{tmp_path / 'ext.txt'}",
      "output": config.output, "progress": False})
  again = early_exit.run(cfg)
  assert not [s for s in again["computed"] if s.startswith(("quality/", "embed/"))]
  summary = json.loads((root / "out" / "early_exit.json").read_text())
  pauc = {r["method"]: r["pauc"] for r in summary["rows"]}
  assert summary["baselines"]["ext"] == pauc["exit_2"]
  assert "| ext |" in (root / "out" / "early_exit.md").read_text()
  early_exit.run(config)                   # the module's other tests read the plain run's files


def test_cost_aware_cascade_reported_and_stored_for_one_call_loading(run):
  """The cascades are calibrated on the cost model measured here (predicted beside measured
  images/s, never slower than the full pass, or the summary says it fell back), and stored in
  the model directory: fx.load(dir).cascade(images) runs the headline one."""
  import exfiqa_jax as fx
  from exfiqa_jax.models import exits
  root, config, _ = run
  summary = json.loads((root / "out" / "early_exit.json").read_text())
  md = (root / "out" / "early_exit.md").read_text()
  assert summary["device"]["platform"] and "predicted images/s" in md
  rows = {r["method"]: r for r in summary["rows"]}
  assert rows["exit_3"]["predicted_images_per_second"] > 0
  for r in summary["rows"]:
    if r["kind"] != "cascade":
      continue
    assert r["objective"] == "seconds" and r["predicted_images_per_second"] > 0
    if r["fallback"]:            # no early exit pays: one full segment, and the report says so
      assert r["exits"] == "3" and f"at {100 * r['target']:g} % agreement on" in md
    else:
      assert r["predicted_speedup"] > 1.0
  head = summary["headline"]
  assert ("no cascade is predicted" in head["text"]) == bool(head["fallback"])
  stored = json.loads((root / "model" / exits.CASCADE_FILE).read_text())
  assert stored["headline"] == 0.99 and stored["device"] == summary["device"]
  assert [c["target"] for c in stored["cascades"]] == list(early_exit_config.TARGETS)
  model = fx.load(str(root / "model"))
  images = np.random.default_rng(3).integers(0, 256, (5, 112, 112, 3), np.uint8)
  got = model.cascade(images)
  for target, c in ((0.99, stored["cascades"][2]), (0.9, stored["cascades"][0])):
    thr = exits.CascadeThresholds.from_dict(c["thresholds"])
    want = model.cascade(images, thr)
    np.testing.assert_array_equal((got if target == 0.99 else model.cascade(images, 0.9)).exit,
                                  want.exit)
  with pytest.raises(ValueError, match="no cascade at agreement target 0.5"):
    model.cascade(images, 0.5)
