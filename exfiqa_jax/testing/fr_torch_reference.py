"""PyTorch twins of the released face-recognition backbones, for parity tests and the benchmark.

Written from the published architectures, with the same `state_dict` key names and shapes:
  * insightface `arcface_torch` iResNet (also ElasticFace, eps 1e-5; MagFace, eps 2e-5 and a
    `features.module.` wrapper in its checkpoints): conv1/bn1/prelu, layer1..4 of IBasicBlock
    (bn1, conv1, bn2, prelu, conv2 (strided), bn3, downsample.{0,1}), bn2, dropout, fc, features.
  * CurricularFace IR-101 (face.evoLVe layout, `res_layer` = BN, Conv, PReLU, Conv, BN) and the
    TFace `torchkit` IR layout (`res_layer` = BN, Conv, BN, PReLU, Conv, BN): input_layer,
    body.N.{shortcut_layer, res_layer}, output_layer (BN2d, Dropout, Flatten, Linear,
    BatchNorm1d(affine=False)).
`randomize_` fills every parameter and BN statistic with non-trivial random values so parity
tests exercise eval-mode BN for real.
"""
from __future__ import annotations

import torch
from torch import nn

IRESNET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3),
                  200: (6, 26, 60, 6)}


class IBasicBlock(nn.Module):
  """Pre-activation style unit: BN → 3x3 conv → BN → PReLU → 3x3 conv (stride here) → BN."""

  def __init__(self, cin: int, cout: int, stride: int = 1, eps: float = 1e-5):
    super().__init__()
    self.bn1 = nn.BatchNorm2d(cin, eps=eps)
    self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout, eps=eps)
    self.prelu = nn.PReLU(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout, eps=eps)
    self.downsample = None
    if stride != 1 or cin != cout:
      self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                      nn.BatchNorm2d(cout, eps=eps))

  def forward(self, x):
    y = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
    skip = x if self.downsample is None else self.downsample(x)
    return y + skip


class IResNet(nn.Module):
  """insightface arcface_torch IResNet; `widths` shrink it for fast tests (official: 64..512)."""

  def __init__(self, layers=(3, 13, 30, 3), widths=(64, 128, 256, 512), num_features=512,
               eps: float = 1e-5, img_size: int = 112):
    super().__init__()
    self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0], eps=eps)
    self.prelu = nn.PReLU(widths[0])
    cin = widths[0]
    for i, (n, w) in enumerate(zip(layers, widths)):
      units = [IBasicBlock(cin, w, 2, eps)] + [IBasicBlock(w, w, 1, eps) for _ in range(n - 1)]
      setattr(self, f"layer{i + 1}", nn.Sequential(*units))
      cin = w
    self.bn2 = nn.BatchNorm2d(cin, eps=eps)
    self.dropout = nn.Dropout(p=0.0)
    side = img_size // 16
    self.fc = nn.Linear(cin * side * side, num_features)
    self.features = nn.BatchNorm1d(num_features, eps=eps)

  def forward(self, x):
    x = self.prelu(self.bn1(self.conv1(x)))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = self.dropout(torch.flatten(self.bn2(x), 1))
    return self.features(self.fc(x))


class MagFaceWrapper(nn.Module):
  """MagFace's released checkpoints hold the backbone under `features.module.`."""

  def __init__(self, backbone: nn.Module):
    super().__init__()
    self.features = nn.Module()
    self.features.module = backbone

  def forward(self, x):
    return self.features.module(x)


class IRUnit(nn.Module):
  """IR unit; `tface=True` adds the BN after the first conv (torchkit BasicBlockIR)."""

  def __init__(self, cin: int, cout: int, stride: int, tface: bool = False):
    super().__init__()
    if cin == cout:
      self.shortcut_layer = nn.MaxPool2d(1, stride)
    else:
      self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
    mid = [nn.BatchNorm2d(cout)] if tface else []
    self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, 1, 1, bias=False),
                                   *mid, nn.PReLU(cout), nn.Conv2d(cout, cout, 3, stride, 1,
                                                                   bias=False),
                                   nn.BatchNorm2d(cout))

  def forward(self, x):
    return self.res_layer(x) + self.shortcut_layer(x)


class IRBackbone(nn.Module):
  """CurricularFace / TFace IR backbone (IR_101 = layers (3, 13, 30, 3))."""

  def __init__(self, layers=(3, 13, 30, 3), widths=(64, 128, 256, 512), num_features=512,
               tface: bool = False, img_size: int = 112):
    super().__init__()
    self.input_layer = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                     nn.BatchNorm2d(widths[0]), nn.PReLU(widths[0]))
    units, cin = [], widths[0]
    for n, w in zip(layers, widths):
      units += [IRUnit(cin, w, 2, tface)] + [IRUnit(w, w, 1, tface) for _ in range(n - 1)]
      cin = w
    self.body = nn.Sequential(*units)
    side = img_size // 16
    self.output_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Dropout(0.4), nn.Flatten(),
                                      nn.Linear(cin * side * side, num_features),
                                      nn.BatchNorm1d(num_features, affine=False))

  def forward(self, x):
    return self.output_layer(self.body(self.input_layer(x)))


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random weights with unit-scale activations, random BN statistics; returns model.eval()."""
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, (nn.Conv2d, nn.Linear)):
      fan_in = m.weight[0].numel()
      m.weight.copy_(torch.randn(m.weight.shape, generator=g) / fan_in ** 0.5)
      if m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
      n = m.running_mean.shape[0]
      m.running_mean.copy_(0.2 * torch.randn(n, generator=g))
      m.running_var.copy_(0.5 + torch.rand(n, generator=g))
      m.num_batches_tracked.fill_(7)
      if m.affine:
        m.weight.copy_(0.6 + 0.5 * torch.rand(n, generator=g))
        m.bias.copy_(0.1 * torch.randn(n, generator=g))
    elif isinstance(m, nn.PReLU):
      m.weight.copy_(0.05 + 0.3 * torch.rand(m.weight.shape, generator=g))
  for m in model.modules():   # damp residual branches (as trained nets do): O(1) activations
    if isinstance(m, IBasicBlock):
      m.bn3.weight.mul_(0.2)
    elif isinstance(m, IRUnit):
      m.res_layer[-1].weight.mul_(0.2)
  return model.eval()
