"""eDifFIQA (exfiqa_jax/methods/ediffiqa.py; family `ediffiqa`, convert/quality_head_keys.py)
against its PyTorch twin (testing/baselines_torch.py): head output and embedding ≤ 1e-4 relative
to their scale; the exact GELU; L/M/S depths from the keys; strict conversion both ways."""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from exfiqa_jax import convert, inference, models
from exfiqa_jax.convert import families, quality_head_keys
from exfiqa_jax.convert.strict import CheckpointError
from exfiqa_jax.methods import crfiqa, ediffiqa
from exfiqa_jax.models import quality_heads
from exfiqa_jax.testing import baselines_torch as bt
from exfiqa_jax.testing import fr_torch_reference as ref

TINY = (8, 16, 24, 32)
LAYERS = (2, 2, 2, 2)       # eDifFIQA-S's iresnet18, narrow
HIDDEN = 48                 # the released heads have 1024; read from the shapes


@pytest.fixture(scope="module")
def twin():
  tmodel = ref.randomize_(bt.ediffiqa(LAYERS, TINY, 64, hidden=HIDDEN), seed=12)
  with torch.no_grad():   # GELU inputs and the output O(1): the erf/tanh forms differ there
    tmodel.mlp.l1.weight.mul_(4.0)
    tmodel.mlp.l2.weight.mul_(20.0)
  sd = bt.numpy_state_dict(tmodel)
  images = bt.uint8_faces(3, seed=2)
  with torch.no_grad():
    feat, pred = tmodel(bt.torch_input(images))
  return sd, images, feat.numpy(), pred.numpy()[:, 0]


def test_detected_from_the_keys_with_the_depth_of_each_size():
  for layers in (ref.IRESNET_LAYERS[18], ref.IRESNET_LAYERS[50], ref.IRESNET_LAYERS[100]):
    sd = bt.numpy_state_dict(bt.ediffiqa(layers, TINY, 64, hidden=HIDDEN))
    family = families.detect_family(sd)
    assert family.name == "ediffiqa"
    config = family.infer_config(sd)
    assert tuple(config["layers"]) == layers and config["head_hidden"] == HIDDEN
    assert config["quality_head"] == "mlp" and config["input_scale"] == "minus1_1"
    assert all(k.startswith(("base_model.", "mlp.l1.", "mlp.l2.")) for k in sd)


def test_scores_and_embeddings_match_the_twin(twin):
  sd, images, feat, pred = twin
  variables, config = convert.convert_state_dict(sd)
  module = models.get_model(config)
  normalised = bt.torch_input(images).permute(0, 2, 3, 1).numpy()
  quality, out = jax.jit(module.apply)(variables, normalised)
  bt.assert_relative_close(quality, pred)
  bt.assert_relative_close(out["embedding"], feat)
  scorer = ediffiqa.scorer(module, variables, config)
  scores = scorer(images)
  assert set(scores) == {"ediffiqa"} and scores["ediffiqa"].shape == (3,)
  bt.assert_relative_close(scores["ediffiqa"], pred)
  # the head's GELU is torch's exact (erf) form: the tanh approximation is measurably off
  approx = _tanh_mlp(variables["params"]["head"], np.asarray(out["embedding"]))
  assert np.abs(approx - pred).max() > 10 * 1e-4 * np.abs(pred).max()


def _tanh_mlp(head, embedding):
  h = embedding @ np.asarray(head["l1"]["kernel"]) + np.asarray(head["l1"]["bias"])
  h = np.asarray(jax.nn.gelu(h, approximate=True))
  return (h @ np.asarray(head["l2"]["kernel"]) + np.asarray(head["l2"]["bias"]))[:, 0]


def test_round_trip_is_bit_identical_and_loads_strictly(twin):
  sd, *_ = twin
  bt.assert_round_trip(quality_head_keys.EDIFFIQA, sd, bt.ediffiqa(LAYERS, TINY, 64, hidden=HIDDEN))


def test_strict_conversion_lists_every_problem(twin):
  sd, *_ = twin
  family = quality_head_keys.EDIFFIQA
  config = family.infer_config(sd)
  broken = dict(sd)
  del broken["mlp.l2.bias"]
  broken["mlp.l1.weight"] = np.ones((HIDDEN, 63), np.float32)
  broken["mlp.l3.weight"] = np.ones(3, np.float32)
  del broken["base_model.features.running_var"]
  with pytest.raises(CheckpointError) as e:
    family.to_flax(broken, config)
  for key in ("mlp.l2.bias", "mlp.l1.weight", "mlp.l3.weight", "base_model.features.running_var"):
    assert key in str(e.value)


def test_pt_file_through_the_loader_and_the_wrong_method(twin, tmp_path):
  sd, images, _, pred = twin
  pt = tmp_path / "ediffiqaS.pth"
  convert.torch_io.save_state_dict(sd, pt)
  variables, config = inference.load_variables(pt)
  module = models.get_model(config)
  assert config["family"] == "ediffiqa" and isinstance(module, quality_heads.BackboneWithHead)
  with pytest.raises(ValueError, match="method=crfiqa.*'ediffiqa'"):
    crfiqa.scorer(module, variables, config)
