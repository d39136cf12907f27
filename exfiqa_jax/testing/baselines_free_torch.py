"""PyTorch twins of the training-free baselines' official scoring, for the parity tests.

Each function follows the official code's own loop on our torch twins of the networks
(testing/fr_torch_reference.py, testing/torch_reference.py), written from:
  SER-FIQ    pterhoer/FaceImageQuality face_image_quality.py (`get_score`): T passes of the tail
             after the dropout, L2-normalised, mean Euclidean distance over the upper triangle,
             s = 2/(1 + exp(d)), rescaled 1/(1 + exp(−α(s − r))). The dropout masks are an input
             here, so a test can feed the twin the masks the JAX method drew.
  GraFIQs    jankolf/GraFIQs backbones/bn.py (forward hooks on every BatchNorm2d: the input's mean
             and biased variance against the running statistics, MSE, mean over layers) and
             extract_grafiqs.py (one image at a time, autograd.grad w.r.t. the image and the
             outputs of layer1..layer4, Σ|grad|).
  ViTNT-FIQA gurayozgur/ViTNT-FIQA backbones/vit/vit.py `calculate_ntfiq`: only the selected blocks
             run, in order; each output → the final LayerNorm → L2 per token; per image and per
             patch the mean distance between consecutive selected blocks, 2/(1 + exp(s·d)), then
             the mean or the attention-weighted sum.
Every number is the official raw value (GraFIQs: Σ|grad|, higher = worse); the sign conventions
of the toolkit's columns are the methods' business (exfiqa_jax/methods/).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from exfiqa_jax.testing import fr_torch_reference as fr_ref
from exfiqa_jax.testing import torch_reference as vit_ref


def _nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1,
                                                                                         2)))


# ---------------------------------------------------------------------------------- SER-FIQ

def _dropout_input(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
  """flatten(bn2(trunk(x))): what the model's dropout layer receives [B, F]."""
  dropout = model.dropout if hasattr(model, "dropout") else model.output_layer[1]
  seen = []
  handle = dropout.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
  with torch.no_grad():
    model(x)
  handle.remove()
  return seen[0].flatten(1)


def _tail(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
  """The layers after the dropout: fc → features BN (iResNet) or output_layer 3, 4 (IR)."""
  if hasattr(model, "fc"):
    return model.features(model.fc(x))
  return model.output_layer[4](model.output_layer[3](x))


def serfiq(model: nn.Module, images: np.ndarray, masks: np.ndarray, rate: float = 0.5,
           alpha: float = 130.0, r: float = 0.88) -> tuple[np.ndarray, np.ndarray]:
  """(s [B], rescaled [B]) with the given dropout masks [T, B, F] (1 = kept), per image."""
  feats = _dropout_input(model.eval(), _nchw(images))
  masks = torch.from_numpy(np.asarray(masks, np.float32))
  t = masks.shape[0]
  scores = []
  for i in range(feats.shape[0]):
    rows = []
    with torch.no_grad():
      for k in range(t):                                  # the official T forward passes
        rows.append(_tail(model, feats[i:i + 1] * masks[k, i] / (1.0 - rate))[0].numpy())
    x = np.asarray(rows, dtype=np.float64)
    norm = x / np.linalg.norm(x, axis=1, keepdims=True)
    upper = np.triu_indices(t, k=1)
    dist = np.linalg.norm(norm[:, None, :] - norm[None, :, :], axis=-1)[upper]
    scores.append(2 * (1 / (1 + np.exp(np.mean(dist)))))
  s = np.asarray(scores)
  return s, 1 / (1 + np.exp(-(alpha * (s - r))))


# ---------------------------------------------------------------------------------- GraFIQs

def block_modules(model: nn.Module) -> list[nn.Module]:
  """The four stage outputs GraFIQs differentiates: layer1..layer4, or the IR body's last unit
  of each stage."""
  if hasattr(model, "layer1"):
    return [model.layer1, model.layer2, model.layer3, model.layer4]
  units = list(model.body)
  ends, i = [], -1
  for stage in _ir_stage_lengths(model):
    i += stage
    ends.append(units[i])
  return ends


def _ir_stage_lengths(model: nn.Module) -> list[int]:
  lengths, width = [], None
  for unit in model.body:
    out = unit.res_layer[-1].num_features
    if out != width:
      lengths.append(0)
      width = out
    lengths[-1] += 1
  return lengths


@torch.enable_grad()      # the official loop needs autograd, whatever the caller's grad mode
def grafiqs(model: nn.Module, images: np.ndarray) -> dict[str, np.ndarray]:
  """Official GraFIQs, one image at a time → raw Σ|grad| for image, block1..block4 [B] each."""
  model = model.eval()
  means, variances, running = [], [], []

  def bn_hook(module, inputs, output):
    x = inputs[0]
    means.append(x.mean([0, 2, 3]))
    variances.append(x.var([0, 2, 3], unbiased=False))
    running.append((module.running_mean, module.running_var))

  blocks: list[torch.Tensor] = []
  handles = [m.register_forward_hook(bn_hook) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d)]
  handles += [m.register_forward_hook(lambda m, i, o: blocks.append(o))
              for m in block_modules(model)]
  mse = nn.MSELoss()
  keys = ("image", "block1", "block2", "block3", "block4")
  out = {k: [] for k in keys}
  try:
    for image in _nchw(images):
      means.clear(), variances.clear(), running.clear(), blocks.clear()
      x = image[None].clone().requires_grad_(True)
      model(x)
      loss = torch.zeros(1)
      for m, v, (rm, rv) in zip(means, variances, running):
        loss += mse(m, rm) + mse(v, rv)
      loss = loss / len(means)
      grads = torch.autograd.grad(outputs=loss, inputs=[x] + blocks)
      for key, g in zip(keys, grads):
        out[key].append(float(torch.abs(g[0]).sum()))
  finally:
    for h in handles:
      h.remove()
  return {k: np.asarray(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------- ViTNT-FIQA

def ntfiq(twin: vit_ref.VitFiqaTorch, images: np.ndarray, scaling: float = 8.0,
          use_attention_weights: bool = False, last_block_attention_only: bool = True,
          blocks_to_use: Sequence[int] | None = None) -> np.ndarray:
  """The official `calculate_ntfiq` loop on the twin → [B]. Patches are the tokens after the
  quality token (ViT-FIQA token/full modes: the toolkit's extension; the official FR ViTs have
  none)."""
  twin = twin.eval()
  selected = (list(twin.blocks) if not blocks_to_use
              else [twin.blocks[i] for i in blocks_to_use])
  extra = twin.extra
  with torch.no_grad():
    x = twin.embed(_nchw(images))
    all_x, attentions = [], []
    for blk in selected:
      logits, _ = blk.attn.logits(blk.norm1(x))
      attentions.append(logits.softmax(dim=-1))
      x = blk(x)
      x_embed = twin.norm(x.float())[:, extra:]
      all_x.append(x_embed / torch.linalg.vector_norm(x_embed, ord=2, dim=2, keepdim=True))
    all_x = torch.stack(all_x, dim=1)                                 # [B, T, N, D]
    weights = None
    if use_attention_weights:
      per_block = [a.mean(dim=1).sum(dim=1)[:, extra:] for a in attentions]
      weights = (per_block[-1] if last_block_attention_only
                 else torch.stack(per_block, dim=1).mean(dim=1))
      weights = weights / weights.sum(dim=1, keepdim=True)
  return ntfiq_patch_loop(all_x, weights if use_attention_weights else None, scaling)


def ntfiq_patch_loop(all_x: torch.Tensor, weights: torch.Tensor | None,
                     scaling: float) -> np.ndarray:
  """calculate_ntfiq's per-image, per-patch Python loop over the normalised tokens all_x
  [B, T, N, D]: mean distance between consecutive blocks → 2 / (1 + exp(s·d)) per patch, then
  the attention-weighted sum (`weights` [B, N], summing to 1) or the plain mean."""
  scores = torch.empty((all_x.shape[0],))
  for i in range(all_x.shape[0]):
    patch_scores = []
    for p in range(all_x.shape[2]):
      patch = all_x[i, :, p, :]
      agg = torch.norm(patch[:-1] - patch[1:], p=2, dim=1).mean()
      patch_scores.append(2 * (1 / (1 + torch.exp(scaling * agg))))
    patch_scores = torch.stack(patch_scores)
    scores[i] = (patch_scores * weights[i]).sum() if weights is not None else patch_scores.mean()
  return scores.numpy()


def tiny_iresnet(seed: int = 3, layers: Sequence[int] = (1, 1, 1, 1)) -> fr_ref.IResNet:
  """A randomised narrow insightface iResNet twin (widths 8..32, 64-d) for the method tests."""
  return fr_ref.randomize_(fr_ref.IResNet(tuple(layers), (8, 16, 24, 32), 64), seed=seed)
