"""MagFace (exfiqa_jax/methods/magface.py) on the `magface` family against its PyTorch twin: the
released file layout, eps 2e-5 and x/255 (convert/iresnet_keys.py), embedding norms ≤ 1e-4
relative; the BGR option; the "embedding norm" label on other FR models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from exfiqa_jax import inference, models
from exfiqa_jax.convert import iresnet_keys
from exfiqa_jax.methods import magface
from exfiqa_jax.testing import baselines_torch as bt
from exfiqa_jax.testing import fr_torch_reference as ref

TINY = (8, 16, 24, 32)
LAYERS = (1, 1, 2, 1)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
  """A file laid out as MagFace releases it, its twin and the twin's norms (RGB and BGR feed)."""
  backbone = ref.IResNet(LAYERS, TINY, 64, eps=2e-5)
  tmodel = ref.randomize_(bt.MagFaceCheckpoint(backbone, 64), seed=13)
  optimizer = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
  path = tmp_path_factory.mktemp("magface") / "magface_epoch_00025.pth"
  torch.save({"epoch": 25, "arch": "iresnet100", "state_dict": tmodel.state_dict(),
              "optimizer": optimizer.state_dict()}, path)
  images = bt.uint8_faces(4, seed=3)
  with torch.no_grad():
    norms = {bgr: tmodel(bt.torch_input(images, "0_1", bgr=bgr)).norm(dim=1).numpy()
             for bgr in (False, True)}
  return path, images, norms


def test_released_file_converts_with_eps_and_input_scale(released):
  path, *_ = released
  variables, config = inference.load_variables(path)
  assert config["family"] == "magface" and config["bn_eps"] == 2e-5
  assert config["input_scale"] == "0_1" and tuple(config["layers"]) == LAYERS
  assert config["key_prefix"] == "features.module."
  back = iresnet_keys.MAGFACE.to_torch(variables, config)   # what builder_inf loads
  assert back and all(k.startswith("features.module.") for k in back)


def test_norms_match_the_twin_folded_and_unfolded(released):
  path, images, norms = released
  variables, config = inference.load_variables(path)
  scorer = magface.scorer(models.get_model(config), variables, config)   # folded inside
  scores = scorer(images)
  assert set(scores) == {"magface"} and scores["magface"].shape == (4,)
  bt.assert_relative_close(scores["magface"], norms[False])
  module, fr_vars, fr_config = inference.load_fr_model(str(path))      # already folded
  bt.assert_relative_close(magface.scorer(module, fr_vars, fr_config)(images)["magface"],
                           norms[False])
  bgr = magface.scorer(module, fr_vars, fr_config, channel_order="bgr")(images)["magface"]
  bt.assert_relative_close(bgr, norms[True])
  assert np.abs(np.asarray(bgr) - norms[False]).max() > 10 * 1e-4 * norms[False].max()


def test_ddp_layout_loads_the_same(released, tmp_path):
  """MagFace's distributed trainer saves `module.features.*`: it converted, then failed its own
  round trip (written back under `features.module.`) until the prefix read became the one
  written."""
  path, images, norms = released
  sd = torch.load(path, weights_only=True)["state_dict"]
  ddp = {"module." + k.replace("features.module.", "features."): v for k, v in sd.items()}
  torch.save({"state_dict": ddp}, tmp_path / "ddp.pth")
  variables, config = inference.load_variables(tmp_path / "ddp.pth")   # round trip inside
  assert config["key_prefix"] == "features."       # torch_io strips the shared "module."
  scorer = magface.scorer(models.get_model(config), variables, config)
  bt.assert_relative_close(scorer(images)["magface"], norms[False])


def test_other_fr_models_are_an_embedding_norm_or_an_error():
  sd = bt.numpy_state_dict(ref.randomize_(ref.IResNet((1, 1, 1, 1), TINY, 64), seed=2))
  config = iresnet_keys.ARCFACE_IRESNET.infer_config(sd)
  module, variables = models.get_model(config), iresnet_keys.ARCFACE_IRESNET.to_flax(sd, config)
  with pytest.raises(ValueError, match="method=magface.*arcface_iresnet"):
    magface.scorer(module, variables, config)
  scores = magface.scorer(module, variables, config, any_family=True)(bt.uint8_faces(2))
  assert set(scores) == {"embedding_norm"}
  with pytest.raises(ValueError, match="channel_order"):
    magface.scorer(module, variables, config, channel_order="rbg")
