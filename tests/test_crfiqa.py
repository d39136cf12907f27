"""CR-FIQA (exfiqa_jax/methods/crfiqa.py; family `crfiqa`, convert/quality_head_keys.py) against
its PyTorch twin (testing/baselines_torch.py): qs and embedding ≤ 1e-4 relative to their scale,
folded and unfolded; strict conversion both ways; detection; the loader paths."""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from exfiqa_jax import checkpoints, convert, embedding, inference, models
from exfiqa_jax.convert import families, iresnet_keys, quality_head_keys
from exfiqa_jax.convert.strict import CheckpointError
from exfiqa_jax.methods import crfiqa
from exfiqa_jax.models import quality_heads
from exfiqa_jax.testing import baselines_torch as bt
from exfiqa_jax.testing import fr_torch_reference as ref

TINY = (8, 16, 24, 32)
LAYERS = (1, 2, 1, 1)


@pytest.fixture(scope="module")
def twin():
  tmodel = ref.randomize_(bt.CRFIQAIResNet(LAYERS, TINY, 64), seed=11)
  sd = bt.numpy_state_dict(tmodel)
  images = bt.uint8_faces(3, seed=1)
  with torch.no_grad():
    emb, qs = tmodel(bt.torch_input(images))
  return tmodel, sd, images, emb.numpy(), qs.numpy()[:, 0]


def test_detected_from_the_keys_and_config(twin):
  _, sd, *_ = twin
  assert families.detect_family(sd).name == "crfiqa"
  backbone_only = {k: v for k, v in sd.items() if not k.startswith("qs.")}
  assert families.detect_family(backbone_only).name == "arcface_iresnet"
  config = quality_head_keys.CRFIQA.infer_config(sd)
  assert config["family"] == "crfiqa" and config["quality_head"] == "linear"
  assert config["input_scale"] == "minus1_1" and config["bn_eps"] == 1e-5
  assert tuple(config["layers"]) == LAYERS and tuple(config["widths"]) == TINY


def test_scores_and_embeddings_match_the_twin(twin):
  _, sd, images, emb, qs = twin
  variables, config = convert.convert_state_dict(sd)
  module = models.get_model(config)
  assert isinstance(module, quality_heads.BackboneWithHead)
  normalised = bt.torch_input(images).permute(0, 2, 3, 1).numpy()
  quality, out = jax.jit(module.apply)(variables, normalised)     # the unfolded model
  bt.assert_relative_close(quality, qs)
  bt.assert_relative_close(out["embedding"], emb)
  scorer = crfiqa.scorer(module, variables, config)                # BatchNorms folded
  scores = scorer(images)
  assert set(scores) == {"crfiqa"} and scores["crfiqa"].shape == (3,)
  assert scorer.method == "crfiqa" and scorer.columns == ("crfiqa",)
  bt.assert_relative_close(scores["crfiqa"], qs)
  bt.assert_relative_close(scorer(normalised)["crfiqa"], qs)    # already-normalised input


def test_round_trip_is_bit_identical_and_loads_strictly(twin):
  _, sd, *_ = twin
  bt.assert_round_trip(quality_head_keys.CRFIQA, sd, bt.CRFIQAIResNet(LAYERS, TINY, 64))


def test_strict_conversion_lists_every_problem(twin):
  _, sd, *_ = twin
  family = quality_head_keys.CRFIQA
  config = family.infer_config(sd)
  broken = dict(sd)
  del broken["qs.bias"]
  broken["qs.weight"] = np.ones((1, 65), np.float32)
  broken["qs.extra"] = np.ones(3, np.float32)
  del broken["layer2.1.bn2.running_mean"]
  with pytest.raises(CheckpointError) as e:
    family.to_flax(broken, config)
  for key in ("qs.bias", "qs.weight", "qs.extra", "layer2.1.bn2.running_mean"):
    assert key in str(e.value)
  with pytest.raises(CheckpointError, match="qs.bias"):   # missing head: not this family
    family.infer_config({k: v for k, v in sd.items() if k != "qs.bias"})


def test_loader_paths_and_fr_use(twin, tmp_path):
  _, sd, images, emb, qs = twin
  pt = tmp_path / "181952backbone.pth"
  convert.torch_io.save_state_dict(sd, pt)
  variables, config = inference.load_variables(pt)
  assert config["family"] == "crfiqa"
  checkpoints.pt_to_directory(str(pt), str(tmp_path / "dir"))
  dir_vars, dir_config = inference.load_variables(tmp_path / "dir")
  assert dir_config == config
  assert checkpoints.variables_digest(dir_vars) == checkpoints.variables_digest(variables)
  module, fr_vars, fr_config = inference.load_fr_model(str(pt))   # CR-FIQA is an FR model too
  ours = embedding.embed_images(module, fr_vars, images, convention="none",
                                input_scale=fr_config["input_scale"])
  bt.assert_relative_close(ours, emb / np.linalg.norm(emb, axis=1, keepdims=True))
  bt.assert_relative_close(crfiqa.scorer(module, fr_vars, fr_config)(images)["crfiqa"], qs)


def test_asked_of_another_model_names_the_flag():
  sd = bt.numpy_state_dict(ref.IResNet((1, 1, 1, 1), TINY, 64))
  config = iresnet_keys.ARCFACE_IRESNET.infer_config(sd)
  variables = iresnet_keys.ARCFACE_IRESNET.to_flax(sd, config)
  with pytest.raises(ValueError, match="method=crfiqa.*arcface_iresnet") as e:
    crfiqa.scorer(models.get_model(config), variables, config)
  assert str(e.value) == ("method=crfiqa needs a crfiqa checkpoint; this checkpoint's family is "
                          "'arcface_iresnet'. Choose another method or a checkpoint that fits.")


def test_trained_by_the_toolkit_scores_as_crfiqa_and_loads_into_the_official_module(tmp_path):
  """configs/train_crfiqa.py end to end on a tiny iResNet + qs: the loss falls over a few steps;
  the exported directory loads as the `crfiqa` method (what score/eval do with it);
  checkpoints.directory_to_pt writes the official layout, which CR-FIQA's module (the twin of
  backbones/iresnet.py) loads strictly and which gives the same qs and embedding; converted
  back, it is the exported directory, bit for bit."""
  import csv
  from exfiqa_jax.train import trainer
  from tests.test_train import crfiqa_data, crfiqa_train_config
  data = crfiqa_data()
  trainer.train(crfiqa_train_config(str(tmp_path / "run"), 8, log_every=1), data)
  with open(tmp_path / "run" / "train_log.csv") as f:
    loss = [float(row["loss"]) for row in csv.DictReader(f)]
  assert len(loss) == 8 and np.all(np.isfinite(loss)), loss
  assert loss[-1] < 0.5 * loss[0], loss
  model_dir = str(tmp_path / "run" / "model")
  model = inference.load(model_dir)
  assert model.method == "crfiqa" and model.columns == ("crfiqa",)
  images = data.images[::8]
  scores = model.score(images)["crfiqa"]
  sd = checkpoints.directory_to_pt(model_dir, str(tmp_path / "model.pt"))
  twin = bt.CRFIQAIResNet((1, 1, 1, 1), TINY, 16, img_size=32).eval()
  twin.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True), strict=True)
  with torch.no_grad():
    emb, qs = twin(bt.torch_input(images))
  bt.assert_relative_close(scores, qs.numpy()[:, 0])
  variables, config_ = checkpoints.load_model(model_dir)
  _, out = models.get_model(config_).apply(variables, bt.torch_input(images).permute(0, 2, 3, 1)
                                           .numpy())
  bt.assert_relative_close(out["embedding"], emb.numpy())
  checkpoints.pt_to_directory(str(tmp_path / "model.pt"), str(tmp_path / "back"))
  assert checkpoints.load_model(str(tmp_path / "back"))[1] == config_
  assert set(sd) == set(bt.numpy_state_dict(twin))
