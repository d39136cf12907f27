"""iResNet / IR parity with independent PyTorch twins (tests/fr_torch_reference.py), converters.

Tolerance: embeddings within 1e-4 absolute and 1e-5 relative to the embedding's max magnitude,
random weights, random non-trivial BN statistics (eval mode), random inputs in [−1, 1].
"""
from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from exfiqa_jax import models
from exfiqa_jax.convert import iresnet_keys as ik
from exfiqa_jax.models import iresnet
from exfiqa_jax.testing import fr_torch_reference as ref

TINY = (8, 16, 24, 32)


def _state_dict(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _images(n: int = 2, seed: int = 1) -> np.ndarray:
  return np.random.RandomState(seed).uniform(-1, 1, (n, 112, 112, 3)).astype(np.float32)


def _parity(tmodel: torch.nn.Module, family, expect_layout: str, n: int = 2, extra=None,
            fold: bool = False):
  ref.randomize_(tmodel, seed=3)
  sd = _state_dict(tmodel)
  bn_vars = [v for k, v in sd.items() if k.endswith("running_var")]
  assert all(np.abs(v - 1).max() > 0.1 for v in bn_vars)   # BN statistics are not the identity
  sd.update(extra or {})
  config = family.infer_config(sd)
  assert config["layout"] == expect_layout
  variables = family.to_flax(sd, config)
  model = models.get_model(config)
  x = _images(n)
  ours = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x))
  with torch.no_grad():
    theirs = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  err = np.abs(ours - theirs).max()
  assert err <= 1e-4 and err <= 1e-5 * np.abs(theirs).max(), (err, np.abs(theirs).max())
  assert np.abs(theirs).max() > 0.1 and np.std(theirs) > 0.05   # a non-degenerate output
  if fold:   # the inference model load_fr_model returns, same tolerance
    folded, folded_vars = iresnet.fold_batchnorm(model.config, variables)
    err = np.abs(np.asarray(jax.jit(lambda v, x: folded.apply(v, x)[0])(folded_vars, x))
                 - theirs).max()
    assert err <= 1e-4 and err <= 1e-5 * np.abs(theirs).max(), (err, np.abs(theirs).max())
  return sd, config, variables


@pytest.mark.parametrize("layers", [ref.IRESNET_LAYERS[18], ref.IRESNET_LAYERS[50]])
def test_arcface_iresnet_tiny_width_parity(layers):
  sd, config, _ = _parity(ref.IResNet(layers, TINY, 64), ik.ARCFACE_IRESNET, "iresnet")
  assert tuple(config["layers"]) == layers and config["input_scale"] == "minus1_1"
  assert config["family"] == "arcface_iresnet" and config["bn_eps"] == 1e-5


def test_full_iresnet100_parity():
  _, config, _ = _parity(ref.IResNet(), ik.ARCFACE_IRESNET, "iresnet", n=1, fold=True)
  assert config["layers"] == [3, 13, 30, 3] and config["widths"] == [64, 128, 256, 512]
  assert config["num_features"] == 512


def test_magface_wrapped_keys_eps_and_head():
  head = {"fc.weight": np.ones((64, 10), np.float32)}   # MagLinear classifier: not backbone
  tmodel = ref.MagFaceWrapper(ref.IResNet((1, 2, 2, 1), TINY, 64, eps=2e-5))
  sd, config, variables = _parity(tmodel, ik.MAGFACE, "iresnet", extra=head)
  assert [f.name for f in ik.FAMILIES if f.matches(sd)] == ["magface"]
  assert config["bn_eps"] == 2e-5 and config["input_scale"] == "0_1"
  back = ik.MAGFACE.to_torch(variables, config)
  assert all(k.startswith("features.module.") for k in back)


def test_curricularface_ir101_small_parity():
  tmodel = ref.IRBackbone(ref.IRESNET_LAYERS[100], TINY, 64)
  sd, config, _ = _parity(tmodel, ik.CURRICULARFACE, "ir", n=1, fold=True)
  assert config["layers"] == [3, 13, 30, 3]
  assert [f.name for f in ik.FAMILIES if f.matches(sd)] == ["curricularface"]


def test_tface_ir_layout_parity():
  _parity(ref.IRBackbone((2, 2, 2, 2), TINY, 64, tface=True), ik.CURRICULARFACE, "ir_tface")


def test_round_trip_is_exact():
  tmodel = ref.randomize_(ref.IResNet((2, 1, 2, 1), TINY, 64), seed=5)
  sd = _state_dict(tmodel)
  config = ik.ARCFACE_IRESNET.infer_config(sd)
  back = ik.ARCFACE_IRESNET.to_torch(ik.ARCFACE_IRESNET.to_flax(sd, config), config)
  assert set(back) == set(sd)
  for k in sd:
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  # and the official module loads it strictly
  fresh = ref.IResNet((2, 1, 2, 1), TINY, 64)
  fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in back.items()}, strict=True)


def test_detection_and_named_families():
  sd = _state_dict(ref.IResNet((1, 1, 1, 1), TINY, 64))
  assert [f.name for f in ik.FAMILIES if f.matches(sd)] == ["arcface_iresnet"]
  assert not ik.ELASTICFACE.matches(sd)          # same keys: must be named explicitly
  cfg = ik.ELASTICFACE.infer_config(sd)
  assert cfg["family"] == "elasticface" and cfg["input_scale"] == "minus1_1"
  assert ik.ARCFACE_IRESNET.infer_config(sd, normalisation="0_1")["input_scale"] == "0_1"
  with pytest.raises(ValueError, match="normalisation"):
    ik.ARCFACE_IRESNET.infer_config(sd, normalisation="imagenet")


def test_strict_loading_lists_every_problem():
  sd = _state_dict(ref.IResNet((1, 1, 1, 1), TINY, 64))
  config = ik.ARCFACE_IRESNET.infer_config(sd)
  broken = dict(sd)
  del broken["layer2.0.bn1.running_var"]
  broken["layer3.0.extra.weight"] = np.ones(3, np.float32)
  broken["layer4.0.prelu.weight"] = np.ones(5, np.float32)
  with pytest.raises(ValueError) as e:
    ik.ARCFACE_IRESNET.to_flax(broken, config)
  for key in ("layer2.0.bn1.running_var", "layer3.0.extra.weight", "layer4.0.prelu.weight"):
    assert key in str(e.value)


def test_not_an_iresnet_is_a_clear_error():
  sd = _state_dict(ref.IRBackbone((1, 1, 1, 1), TINY, 64))
  with pytest.raises(ValueError, match="not an iResNet"):
    ik.ARCFACE_IRESNET.infer_config(sd)


def test_config_json_round_trip_and_errors():
  cfg = iresnet.iresnet_config(101, layout="ir")
  assert iresnet.IResNetConfig.from_dict(cfg.to_dict()) == cfg
  with pytest.raises(ValueError, match="layout"):
    iresnet.IResNetConfig(layout="resnet")
  model = iresnet.IResNet(iresnet.tiny_config())
  with pytest.raises(ValueError, match="NHWC"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, 3, 112, 112), np.float32))


FOLD_CASES = [
    ("arcface_iresnet", lambda: ref.IResNet((2, 1, 2, 1), TINY, 64), "iresnet"),
    ("elasticface", lambda: ref.IResNet((1, 2, 1, 2), TINY, 64), "iresnet"),
    ("magface", lambda: ref.MagFaceWrapper(ref.IResNet((1, 1, 2, 1), TINY, 64, eps=2e-5)),
     "iresnet"),
    ("curricularface", lambda: ref.IRBackbone((2, 1, 2, 1), TINY, 64), "ir"),
    ("tface_ir", lambda: ref.IRBackbone((1, 2, 1, 2), TINY, 64, tface=True), "ir_tface"),
]


@pytest.mark.parametrize("family_name,make,layout", FOLD_CASES, ids=[c[0] for c in FOLD_CASES])
def test_folded_batchnorm_equals_unfolded_and_twin(family_name, make, layout):
  family = {f.name: f for f in ik.FAMILIES}[family_name]
  tmodel = ref.randomize_(make(), seed=7)
  sd = _state_dict(tmodel)
  config = family.infer_config(sd)
  assert config["layout"] == layout
  model, variables = models.get_model(config), family.to_flax(sd, config)
  folded, folded_vars = iresnet.fold_batchnorm(model.config, variables)
  assert set(folded_vars) == {"params"}                         # no BatchNorm left
  x = _images(2, seed=4)
  unfolded_out = np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x))
  run_folded = jax.jit(lambda v, x: folded.apply(v, x)[0])
  folded_out = np.asarray(run_folded(folded_vars, x))
  with torch.no_grad():
    theirs = tmodel(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  assert np.abs(theirs).max() > 0.1 and np.std(theirs) > 0.05
  np.testing.assert_allclose(folded_out, unfolded_out, atol=1e-4, rtol=0)
  np.testing.assert_allclose(folded_out, theirs, atol=1e-4, rtol=0)
  # The border-aware bias is what makes the leading-BN fold exact: a per-channel bias (its
  # interior value) is measurably wrong, so this test would catch the naive fold.
  naive = jax.tree_util.tree_map_with_path(
      lambda p, v: (np.broadcast_to(v[1:2, 1:2], v.shape) if p[-1].key == "bias1" else v),
      folded_vars)
  assert np.abs(np.asarray(run_folded(naive, x)) - theirs).max() > 1e-3


def test_folded_model_is_inference_only():
  cfg = iresnet.tiny_config(layers=(1, 1, 1, 1))
  model = iresnet.IResNet(cfg)
  shapes = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 112, 112, 3), np.float32))
  variables = jax.tree.map(lambda s: np.ones(s.shape, np.float32), shapes)
  folded, folded_vars = iresnet.fold_batchnorm(cfg, variables)
  with pytest.raises(ValueError, match="train IResNet"):
    folded.apply(folded_vars, np.zeros((1, 112, 112, 3), np.float32), train=True)
