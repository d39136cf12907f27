"""Our own PyTorch twin of the official ViT-FIQA / EX-FIQA / ATTN-FIQA modules, for parity tests.

Written from docs/methods.md§4 with the official state_dict key names (Appendix A). Every exit
is computed the official EX-FIQA way (re-run blocks 1..l, shared final LN, unchanged heads), and
ATTN-FIQA from the explicit N×N pre-softmax logits — independent of the Flax implementation.
"""
from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
  def __init__(self, dim: int, num_heads: int):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=False)
    self.proj = nn.Linear(dim, dim)

  def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-softmax scaled logits [B, H, T, T] and v [B, H, T, d]."""
    b, t, c = x.shape
    qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    return (q.float() @ k.float().transpose(-2, -1)) * self.scale, v

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    b, t, c = x.shape
    logits, v = self.logits(x)
    attn = logits.softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, t, c))


class Mlp(nn.Module):
  def __init__(self, dim: int, hidden: int):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.ReLU6()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim: int, num_heads: int, mlp_dim: int):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim)   # registration order as in the official file: norm1,
    self.norm2 = nn.LayerNorm(dim)   # norm2, attn, mlp (Appendix A)
    self.attn = Attention(dim, num_heads)
    self.mlp = Mlp(dim, mlp_dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  def __init__(self, patch: int, dim: int):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class VitFiqaTorch(nn.Module):
  """mode: token | crfiqa | full | fr (no quality token, no head_qs). Input NCHW in [-1, 1]."""

  def __init__(self, mode: str = "token", width: int = 512, depth: int = 12, num_heads: int = 8,
               patch_size: int = 9, img_size: int = 112, mlp_dim: int = 2048,
               embed_dim: int = 512, mask_token: bool = True):
    super().__init__()
    self.mode = mode
    num_patches = (img_size // patch_size) ** 2
    self.extra = 1 if mode in ("token", "full") else 0
    tokens = num_patches + self.extra
    if self.extra:
      self.qs_token = nn.Parameter(torch.zeros(1, 1, width))
    self.pos_embed = nn.Parameter(torch.zeros(1, tokens, width))
    if mask_token:
      self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
    self.patch_embed = PatchEmbed(patch_size, width)
    self.blocks = nn.ModuleList([Block(width, num_heads, mlp_dim) for _ in range(depth)])
    self.norm = nn.LayerNorm(width)
    feature_in = (tokens if mode == "full" else num_patches) * width
    self.feature = nn.Sequential(
        nn.Linear(feature_in, embed_dim, bias=False), nn.BatchNorm1d(embed_dim, eps=2e-5),
        nn.Linear(embed_dim, embed_dim, bias=False), nn.BatchNorm1d(embed_dim, eps=2e-5))
    if mode != "fr":
      head_in = width if mode == "token" else embed_dim
      self.head_qs = nn.Sequential(nn.BatchNorm1d(head_in, eps=2e-5),
                                   nn.Linear(head_in, 1, bias=False))

  def embed(self, img: torch.Tensor) -> torch.Tensor:
    x = self.patch_embed(img)
    if self.extra:
      x = torch.cat([self.qs_token.expand(x.shape[0], -1, -1), x], dim=1)
    return x + self.pos_embed

  def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Shared final LN (float32) + unchanged heads on a residual stream → (embedding, qs)."""
    xn = self.norm(x.float())
    flat = (xn[:, 1:] if self.mode == "token" else xn).reshape(xn.shape[0], -1)
    emb = self.feature(flat)
    if self.mode == "fr":
      return emb, None
    qs = self.head_qs(xn[:, 0] if self.mode == "token" else emb)
    return emb, qs[:, 0]

  def forward(self, img):
    x = self.embed(img)
    for blk in self.blocks:
      x = blk(x)
    return self.heads(x)

  def exits(self, img) -> tuple[torch.Tensor, torch.Tensor]:
    """(exit_scores [B, L] or None, embeddings [B, L, E]) the official way: one run per exit."""
    scores, embs = [], []
    for exit_block in range(len(self.blocks)):
      x = self.embed(img)
      for blk in self.blocks[:exit_block + 1]:
        x = blk(x)
      emb, qs = self.heads(x)
      embs.append(emb)
      scores.append(qs)
    exit_scores = None if self.mode == "fr" else torch.stack(scores, dim=1)
    return exit_scores, torch.stack(embs, dim=1)

  def attention(self, img) -> tuple[torch.Tensor, torch.Tensor]:
    """ATTN-FIQA per block [B, L] and per-patch maps [B, L, N_patches] from explicit logits."""
    scores, maps = [], []
    x = self.embed(img)
    for blk in self.blocks:
      logits, _ = blk.attn.logits(blk.norm1(x))                      # [B, H, T, T]
      scores.append(logits.flatten(1).mean(dim=1))
      maps.append(logits.mean(dim=(1, 2))[:, self.extra:])          # keys that are patches
      x = blk(x)
    return torch.stack(scores, dim=1), torch.stack(maps, dim=1)


def random_init_(model: nn.Module, seed: int = 0) -> nn.Module:
  """Random non-trivial values for every parameter and BN statistic (running_var > 0)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=g)
      if name.endswith("weight") and p.ndim >= 2:       # Linear / Conv: unit-variance outputs
        p.copy_(noise / p[0].numel() ** 0.5)
      elif name.endswith("weight"):                    # LayerNorm / BatchNorm scale
        p.copy_(1.0 + 0.2 * noise)
      else:                                            # biases, tokens, positions
        p.copy_(0.2 * noise)
    for name, b in model.named_buffers():
      if name.endswith("running_mean"):
        b.copy_(torch.randn(b.shape, generator=g) * 0.3)
      elif name.endswith("running_var"):
        b.copy_(torch.rand(b.shape, generator=g) * 1.5 + 0.5)
      elif name.endswith("num_batches_tracked"):
        b.fill_(int(torch.randint(1, 1000, (1,), generator=g)))
  return model.eval()


def tiny_kwargs(mode: str = "token", **overrides) -> dict:
  """The twin's arguments for exfiqa_jax.models.vit.tiny_config(mode)."""
  kw = dict(mode=mode, width=32, depth=3, num_heads=4, patch_size=28, img_size=112, mlp_dim=64,
            embed_dim=24, mask_token=True)
  kw.update(overrides)
  return kw
