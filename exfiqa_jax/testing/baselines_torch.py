"""PyTorch twins of the model-based FIQA baselines, for parity tests (tests/test_crfiqa.py, ...).

Written from the official module definitions, so `state_dict()` has the released key names:
  * CR-FIQA (fdbtrs/CR-FIQA backbones/iresnet.py `IResNet(..., qs=1)`): the insightface iResNet
    and `qs = Linear(num_features, 1)` on the `features` output; forward → (embedding, qs).
  * eDifFIQA (LSIbabnikz/eDifFIQA model/ediffiqa.py, model/mlp.py): `eDifFIQA(base_model, mlp)`,
    `MLP` = l1 Linear(512, 1024), ac GELU (exact), l2 Linear(1024, 1); forward → (feat, pred)
    with `return_feat` (the released configs set it to 0: pred only).
  * MagFace: the iResNet with eps 2e-5 under `features.module.` (fr_torch_reference.MagFaceWrapper)
    plus the MagLinear classifier `fc.weight` [E, classes] that the released files carry.
Widths shrink for fast tests (official: 64..512, 512-d embedding).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from exfiqa_jax.testing import fr_torch_reference as ref


class CRFIQAIResNet(ref.IResNet):
  """CR-FIQA's iResNet: the FR backbone plus the `qs` regression head on its embedding."""

  def __init__(self, layers=(3, 13, 30, 3), widths=(64, 128, 256, 512), num_features=512,
               eps: float = 1e-5, img_size: int = 112):
    super().__init__(layers, widths, num_features, eps, img_size)
    self.qs = nn.Linear(num_features, 1)

  def forward(self, x):
    embedding = super().forward(x)
    return embedding, self.qs(embedding)


class MLP(nn.Module):
  """eDifFIQA's quality head."""

  def __init__(self, in_dim: int = 512, hidden_dim: int = 1024, out_dim: int = 1):
    super().__init__()
    self.l1 = nn.Linear(in_dim, hidden_dim)
    self.ac = nn.GELU()
    self.l2 = nn.Linear(hidden_dim, out_dim)

  def forward(self, x):
    return self.l2(self.ac(self.l1(x)))


class EDifFIQA(nn.Module):
  """eDifFIQA: an FR backbone and the MLP head on its (unnormalised) embedding."""

  def __init__(self, backbone_model: nn.Module, quality_head: nn.Module, return_feat: bool = True):
    super().__init__()
    self.base_model = backbone_model
    self.mlp = quality_head
    self.return_feat = return_feat

  def forward(self, x):
    feat = self.base_model(x)
    pred = self.mlp(feat)
    return (feat, pred) if self.return_feat else pred


class MagFaceCheckpoint(ref.MagFaceWrapper):
  """A released MagFace file's modules: the backbone under `features.module.` and the MagLinear
  classifier weight `fc.weight` [E, classes] (a training head; inference ignores it)."""

  def __init__(self, backbone: nn.Module, num_features: int, num_classes: int = 10):
    super().__init__(backbone)
    self.fc = nn.Module()
    self.fc.weight = nn.Parameter(torch.zeros(num_features, num_classes))


def ediffiqa(layers=(3, 13, 30, 3), widths=(64, 128, 256, 512), num_features=512,
             hidden: int = 1024) -> EDifFIQA:
  """eDifFIQA-L (layers iresnet100), -M (iresnet50), -S (iresnet18) at the given widths."""
  return EDifFIQA(ref.IResNet(layers, widths, num_features), MLP(num_features, hidden, 1))


def numpy_state_dict(model: nn.Module) -> dict[str, np.ndarray]:
  """model.state_dict() as numpy arrays (copies)."""
  return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def uint8_faces(n: int = 3, seed: int = 0, size: int = 112) -> np.ndarray:
  """Random uint8 [n, size, size, 3] crops (RGB)."""
  return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def torch_input(images_uint8: np.ndarray, input_scale: str = "minus1_1",
                bgr: bool = False) -> torch.Tensor:
  """uint8 NHWC → the official scripts' float NCHW tensor: x/255 (MagFace) or (x/255 − .5)/.5."""
  x = torch.from_numpy(images_uint8[..., ::-1].copy() if bgr else images_uint8.copy())
  x = x.permute(0, 3, 1, 2).float().div(255)
  return x if input_scale == "0_1" else x.sub(0.5).div(0.5)


def assert_relative_close(ours, theirs, rtol: float = 1e-4) -> float:
  """max |ours − theirs| / max |theirs| ≤ rtol, on a non-degenerate reference (scale and spread
  large enough that the comparison means something); returns the error."""
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  scale = np.abs(theirs).max()
  assert scale > 0.1 and np.std(theirs) > 1e-3, (scale, np.std(theirs))
  err = np.abs(ours - theirs).max() / scale
  assert err <= rtol, err
  return err


def assert_round_trip(family, sd: dict[str, np.ndarray], fresh: nn.Module) -> None:
  """torch → flax → torch is bit-identical for `family` on `sd`, and loads strictly into
  `fresh` (a twin of the same architecture)."""
  config = family.infer_config(sd)
  back = family.to_torch(family.to_flax(sd, config), config)
  assert set(back) == set(sd)
  for k in sd:
    if not k.endswith("num_batches_tracked"):
      np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
  fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in back.items()},
                        strict=True)
