"""The facenet-pytorch MTCNN as the reference for exfiqa_jax/detection/ (tests and bench).

facenet-pytorch 2.6.0 (MIT) imports torchvision for `batched_nms` (and `transforms.functional`
for its crop extraction); the PyPI torchvision wheels do not import beside this project's torch
build. `import_facenet_pytorch()` therefore imports it with a stand-in torchvision placed in
`sys.modules` only while the import runs: `batched_nms` is a plain-torch NMS with torchvision's
semantics (stable descending sort by score, IoU without the +1 pixel convention, a box is
suppressed when IoU > threshold, classes kept apart by the coordinate offset trick), and
`to_tensor` the HWC → CHW float conversion. The reference code itself runs unchanged.

`ReferenceTap` records what the reference computes between its stages (the boxes entering the
R-Net and O-Net, the networks' outputs), so the tests compare stage by stage
(docs/data.md, "Raw photos: detection and alignment").
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
import types
from typing import Any, Iterator

import numpy as np

INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"


def nms(boxes, scores, threshold: float):
  """torchvision.ops.nms semantics in plain torch: indices kept, by decreasing score."""
  import torch
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64)
  x1, y1, x2, y2 = boxes.unbind(1)
  areas = (x2 - x1) * (y2 - y1)
  order = torch.sort(scores, stable=True, descending=True)[1]
  suppressed = torch.zeros(len(scores), dtype=torch.bool)
  keep = []
  for i in order.tolist():
    if suppressed[i]:
      continue
    keep.append(i)
    w = (torch.minimum(x2[i], x2) - torch.maximum(x1[i], x1)).clamp(min=0)
    h = (torch.minimum(y2[i], y2) - torch.maximum(y1[i], y1)).clamp(min=0)
    inter = w * h
    suppressed |= inter / (areas[i] + areas - inter) > threshold
  return torch.as_tensor(keep, dtype=torch.int64)


def batched_nms(boxes, scores, idxs, threshold: float):
  """torchvision.ops.boxes.batched_nms (the coordinate-offset variant) over `nms` above."""
  import torch
  if boxes.numel() == 0:
    return torch.empty((0,), dtype=torch.int64)
  offsets = idxs.to(boxes) * (boxes.max() + 1)
  return nms(boxes + offsets[:, None], scores, threshold)


def _to_tensor(picture):
  import torch
  array = np.asarray(picture)
  if array.ndim == 2:
    array = array[:, :, None]
  tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
  return tensor.float().div(255) if tensor.dtype == torch.uint8 else tensor


@contextlib.contextmanager
def _stand_in_torchvision() -> Iterator[None]:
  names = ("torchvision", "torchvision.ops", "torchvision.ops.boxes", "torchvision.transforms",
           "torchvision.transforms.functional")
  saved = {n: sys.modules.get(n) for n in names}
  modules = {n: types.ModuleType(n) for n in names}
  modules["torchvision.ops.boxes"].batched_nms = batched_nms
  modules["torchvision.ops.boxes"].nms = nms
  modules["torchvision.ops"].boxes = modules["torchvision.ops.boxes"]
  modules["torchvision.transforms.functional"].to_tensor = _to_tensor
  modules["torchvision.transforms"].functional = modules["torchvision.transforms.functional"]
  modules["torchvision"].ops = modules["torchvision.ops"]
  modules["torchvision"].transforms = modules["torchvision.transforms"]
  sys.modules.update(modules)
  try:
    yield
  finally:
    for n, m in saved.items():
      if m is None:
        sys.modules.pop(n, None)
      else:
        sys.modules[n] = m


def import_facenet_pytorch() -> types.ModuleType:
  """facenet_pytorch, imported beside the stand-in torchvision (see the module docstring)."""
  if "facenet_pytorch" in sys.modules:
    return sys.modules["facenet_pytorch"]
  if importlib.util.find_spec("facenet_pytorch") is None:
    raise ImportError(f"the MTCNN reference needs facenet-pytorch: {INSTALL}")
  with _stand_in_torchvision():
    return importlib.import_module("facenet_pytorch")


def detect_face_module() -> types.ModuleType:
  import_facenet_pytorch()
  return sys.modules["facenet_pytorch.models.utils.detect_face"]


def reference_mtcnn(**kwargs: Any):
  """facenet_pytorch.MTCNN on the CPU with the release weights (its defaults: min face 20,
  factor 0.709, thresholds 0.6/0.7/0.7), in eval mode, its weights frozen (no autograd graph;
  the process's grad mode is left alone: other references need it)."""
  import torch
  fnp = import_facenet_pytorch()
  return fnp.MTCNN(device=torch.device("cpu"), **kwargs).eval().requires_grad_(False)


class ReferenceTap:
  """Records the reference's intermediate results during `mtcnn.detect` on ONE image.

    with ReferenceTap(mtcnn) as tap:
      boxes, probs, points = mtcnn.detect(image, landmarks=True)
    tap.stage1   # [N1, 5] squared P-Net boxes entering the R-Net (x1, y1, x2, y2, P-Net score)
    tap.rnet     # R-Net probabilities of a face [N1] for those boxes
    tap.stage2   # [N2, 5] squared boxes entering the O-Net (score: the R-Net's)
    tap.onet     # O-Net probabilities [N2]
  """

  def __init__(self, mtcnn):
    self.mtcnn = mtcnn
    self.stage1 = np.zeros((0, 5), np.float32)
    self.stage2 = np.zeros((0, 5), np.float32)
    self.rnet = np.zeros((0,), np.float32)
    self.onet = np.zeros((0,), np.float32)
    self.rnet_input = None
    self.onet_input = None

  def __enter__(self) -> "ReferenceTap":
    module = detect_face_module()
    self._module = module
    self._pad = module.pad
    self._batch = module.fixed_batch_process
    pads = []

    def pad(boxes, w, h):
      pads.append(boxes.detach().cpu().numpy().copy())
      return self._pad(boxes, w, h)

    def fixed_batch_process(im_data, model):
      out = self._batch(im_data, model)
      if model is self.mtcnn.rnet:
        self.rnet_input, self.rnet = im_data.numpy().copy(), out[1][:, 1].numpy().copy()
      else:
        self.onet_input, self.onet = im_data.numpy().copy(), out[2][:, 1].numpy().copy()
      return out

    self._pads = pads
    module.pad = pad
    module.fixed_batch_process = fixed_batch_process
    return self

  def __exit__(self, *exc) -> None:
    self._module.pad = self._pad
    self._module.fixed_batch_process = self._batch
    if self._pads:
      self.stage1 = self._pads[0][:, :5]
    if len(self._pads) > 1:
      self.stage2 = self._pads[1][:, :5]
