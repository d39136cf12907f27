"""One Linen ViT for ViT-FIQA (token / crfiqa / full), EX-FIQA exits and ATTN-FIQA.

Also the face-recognition ViTs without a quality token (insightface arcface_torch, CVLFace;
mode "fr"). The block stack is an `nn.scan` over parameters stacked on a leading depth axis;
the scan's per-step output is what every exit needs (the raw quality token, or all tokens for
the crfiqa/full heads, and the ATTN-FIQA statistics of that block), and the shared final
LayerNorm and the unchanged heads run once over the stacked `[L, B, ...]` outputs — one jitted
pass gives every exit (docs/methods.md).

    model = VisionTransformer(cfg)                       # depth=k: the first k blocks only
    output, out = model.apply(variables, images)         # images float32 [B,112,112,3] in [-1,1]
    out["exit_scores"] [B, L], out["attn_scores"] [B, L], out["embedding"] [B, E]

`apply(..., vitnt=VitntSpec(blocks))` also carries ViTNT-FIQA's running sums through the same
scan (each patch's distance between consecutive selected blocks and its attention weight;
out["vitnt_distance"], out["vitnt_weight"] [B, N]); without it the program is the plain pass.

A truncated program (`depth=k`) expects block parameters sliced to k
(`exfiqa_jax.models.exits.truncate_variables`), so its cost really falls with k. Parameter names mirror the PyTorch module tree.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("token", "crfiqa", "full", "fr")
QUALITY_MODES = ("token", "crfiqa", "full")
LN_EPS = 1e-5   # torch nn.LayerNorm default (Flax's is 1e-6)
BN_EPS = 2e-5   # feature.1, feature.3, head_qs.0
BN_MOMENTUM = 0.1  # torch convention: running = (1 - m)·running + m·batch


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture; released ViT-FIQA ViT-S is the default (docs/methods.md)."""
  mode: str = "token"
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  patch_size: int = 9
  img_size: int = 112
  mlp_dim: int = 2048
  embed_dim: int = 512
  has_mask_token: bool = True
  mask_ratio: float = 0.1
  drop_path_rate: float = 0.1

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
    if self.width % self.num_heads:
      raise ValueError(f"width {self.width} is not divisible by num_heads {self.num_heads}; "
                       "pass the number of heads the checkpoint was trained with")
    if self.img_size < self.patch_size:
      raise ValueError(f"img_size {self.img_size} is smaller than patch_size {self.patch_size}")

  @property
  def grid(self) -> int:
    return self.img_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid * self.grid

  @property
  def has_quality_token(self) -> bool:
    return self.mode in ("token", "full")

  @property
  def num_tokens(self) -> int:
    return self.num_patches + int(self.has_quality_token)

  @property
  def feature_in(self) -> int:
    """Input width of feature.0: tokens 1..N (token), all tokens (crfiqa/full/fr)."""
    return (self.num_tokens if self.mode == "full" else self.num_patches) * self.width

  @property
  def quality_head_in(self) -> int:
    """Width of head_qs: the quality token (token mode) or the FR embedding (crfiqa/full)."""
    return self.width if self.mode == "token" else self.embed_dim

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ViTConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
      raise ValueError(f"unknown ViTConfig fields {sorted(unknown)}; known: {sorted(fields)}")
    return cls(**dict(d))


def tiny_config(mode: str = "token", **overrides) -> ViTConfig:
  """A few-KFLOP ViT for tests: width 32, depth 3, 4 heads, patch 28 (16 patches)."""
  base = dict(mode=mode, width=32, depth=3, num_heads=4, patch_size=28, img_size=112,
              mlp_dim=64, embed_dim=24)
  base.update(overrides)
  return ViTConfig(**base)


def vit_s_config(mode: str = "token") -> ViTConfig:
  """The released ViT-FIQA ViT-S (patch 9, width 512, depth 12, 8 heads, MLP 2048)."""
  return ViTConfig(mode=mode)


def cvlface_config(variant: str = "S") -> ViTConfig:
  """The CVLFace ViT-S / ViT-B that ATTN-FIQA uses (docs/methods.md)."""
  if variant == "S":
    return ViTConfig(mode="fr", patch_size=8, mlp_dim=2560, has_mask_token=False)
  if variant == "B":
    return ViTConfig(mode="fr", patch_size=8, depth=24, num_heads=16, mlp_dim=1536,
                     has_mask_token=False)
  raise ValueError(f"CVLFace variant must be 'S' or 'B', got {variant!r}")


# ----------------------------------------------------------------------------------------------
# Layers


def _trunc_normal(std: float = 0.02):
  return nn.initializers.truncated_normal(stddev=std)


class BatchNorm1d(nn.Module):
  """torch.nn.BatchNorm1d semantics: eval uses running stats; train updates them with the
  *unbiased* batch variance and momentum 0.1 (Flax's BatchNorm stores the biased one)."""
  features: int
  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    scale = self.param("scale", nn.initializers.ones, (self.features,))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    mean = self.variable("batch_stats", "mean", jnp.zeros, (self.features,))
    var = self.variable("batch_stats", "var", jnp.ones, (self.features,))
    x = x.astype(jnp.float32)
    if train:
      axes = tuple(range(x.ndim - 1))
      batch_mean = jnp.mean(x, axis=axes)
      batch_var = jnp.mean(jnp.square(x - batch_mean), axis=axes)
      n = np.prod([x.shape[a] for a in axes])
      if not self.is_initializing():
        mean.value = (1 - BN_MOMENTUM) * mean.value + BN_MOMENTUM * batch_mean
        var.value = (1 - BN_MOMENTUM) * var.value + BN_MOMENTUM * batch_var * n / max(n - 1, 1)
      m, v = batch_mean, batch_var
    else:
      m, v = mean.value, var.value
    return (x - m) * jax.lax.rsqrt(v + self.eps) * scale + bias


class FeatureHead(nn.Module):
  """`feature`: Linear(F→E, no bias) → BN → Linear(E→E, no bias) → BN; names 0..3 as in torch."""
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.Dense(self.embed_dim, use_bias=False, kernel_init=_trunc_normal(), dtype=self.dtype,
                 name="0")(x)
    x = BatchNorm1d(self.embed_dim, name="1")(x, train)
    x = nn.Dense(self.embed_dim, use_bias=False, kernel_init=_trunc_normal(), dtype=self.dtype,
                 name="2")(x)
    return BatchNorm1d(self.embed_dim, name="3")(x, train)


class QualityHead(nn.Module):
  """`head_qs`: BN → Linear(E→1, no bias), always float32 (a regression to a small number)."""
  features: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = BatchNorm1d(self.features, name="0")(x, train)
    return nn.Dense(1, use_bias=False, kernel_init=_trunc_normal(), name="1")(x)[..., 0]


def attention_statistics(q: jnp.ndarray, k: jnp.ndarray, scale: float,
                         key_slice: slice | None = None) -> tuple[jnp.ndarray, jnp.ndarray | None]:
  """ATTN-FIQA from q, k [B, T, H, d] without the T×T matrix (docs/methods.md).

  score = (1/H) Σ_h scale·⟨mean_i q_hi, mean_j k_hj⟩ = mean of all pre-softmax logits;
  map_j = (1/H) Σ_h scale·⟨mean_i q_hi, k_hj⟩ = the logit key j receives, mean over heads/queries.
  """
  q = q.astype(jnp.float32)
  k = k.astype(jnp.float32)
  q_mean = jnp.mean(q, axis=1)                                    # [B, H, d]
  k_mean = jnp.mean(k, axis=1)
  score = scale * jnp.mean(jnp.sum(q_mean * k_mean, axis=-1), axis=-1)
  if key_slice is None:
    return score, None
  maps = scale * jnp.einsum("bhd,bthd->bt", q_mean, k[:, key_slice]) / q.shape[2]
  return score, maps


def attention_statistics_explicit(q: jnp.ndarray, k: jnp.ndarray, scale: float,
                                  key_slice: slice | None = None):
  """The same statistics from the explicit [B, H, T, T] logits (reference path for tests)."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32)) * scale
  score = jnp.mean(logits, axis=(1, 2, 3))
  if key_slice is None:
    return score, None
  return score, jnp.mean(logits, axis=(1, 2))[:, key_slice]


@dataclasses.dataclass(frozen=True)
class VitntSpec:
  """What the scan accumulates for ViTNT-FIQA (docs/methods.md; scores in methods/vitnt.py).

  `blocks`: 0-based blocks of this program whose outputs are compared (strictly increasing, at
  least two); `attention`: the patch weights come from the "last" selected block's softmax
  attention or are the "mean" over the selected blocks.
  """
  blocks: tuple[int, ...]
  attention: str = "last"

  def __post_init__(self):
    blocks = tuple(int(b) for b in self.blocks)
    object.__setattr__(self, "blocks", blocks)
    if len(blocks) < 2 or blocks[0] < 0 or any(b <= a for a, b in zip(blocks, blocks[1:])):
      raise ValueError(f"ViTNT-FIQA compares consecutive selected blocks: pass at least two "
                       f"strictly increasing 0-based block indices, got {self.blocks}")
    if self.attention not in ("last", "mean"):
      raise ValueError(f"attention must be 'last' or 'mean', got {self.attention!r}")

  def flags(self, num_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Per scan step: (block selected, selected and compared with the previous selected one)."""
    if self.blocks[-1] >= num_blocks:
      raise ValueError(f"ViTNT-FIQA blocks {self.blocks} reach past this program's "
                       f"{num_blocks} blocks: pass strictly increasing 0-based indices in "
                       f"0..{num_blocks - 1} (the official IJB-C run: 0..19 of 24)")
    selected = np.isin(np.arange(num_blocks), self.blocks)
    return selected, selected & (np.arange(num_blocks) > self.blocks[0])


class Attention(nn.Module):
  """Multi-head self-attention; qkv without bias, rows [q | k | v], heads contiguous.

  With `received_attention` it also returns, per key, the softmax attention it receives averaged
  over heads and summed over queries [B, T] (ViTNT-FIQA's patch weights); otherwise None.
  """
  config: ViTConfig
  dtype: Any = jnp.float32
  return_maps: bool = False
  explicit_stats: bool = False
  received_attention: bool = False

  @nn.compact
  def __call__(self, x: jnp.ndarray):
    cfg = self.config
    b, t, d = x.shape
    qkv = nn.Dense(3 * d, use_bias=False, kernel_init=_trunc_normal(), dtype=self.dtype,
                   name="qkv")(x)
    # Head-major [B, H, T, d] once: XLA CPU runs the batched attention matmuls 2-3x faster in
    # this layout than on strided [B, T, H, d] slices (bench/throughput.py).
    q, k, v = qkv.reshape(b, t, 3, cfg.num_heads, cfg.head_dim).transpose(2, 0, 3, 1, 4)
    scale = cfg.head_dim ** -0.5
    stats_fn = attention_statistics_explicit if self.explicit_stats else attention_statistics
    patches = slice(int(cfg.has_quality_token), None) if self.return_maps else None
    score, maps = stats_fn(q.swapaxes(1, 2), k.swapaxes(1, 2), scale, patches)
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
    # Softmax with the division after the value matmul ([B, H, T, d] divides, not [B, H, T, T]).
    unnormalised = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, -1, keepdims=True)))
    out = jnp.einsum("bhqk,bhkd->bhqd", unnormalised.astype(self.dtype), v,
                     preferred_element_type=jnp.float32)
    sums = jnp.sum(unnormalised, -1, keepdims=True)                    # [B, H, T, 1] per query
    out = (out / sums).astype(self.dtype)
    out = out.transpose(0, 2, 1, 3).reshape(b, t, d)
    out = nn.Dense(d, kernel_init=_trunc_normal(), dtype=self.dtype, name="proj")(out)
    received = None
    if self.received_attention:
      received = jnp.einsum("bhqk,bhq->bk", unnormalised,
                            1.0 / jnp.squeeze(sums, -1)) / cfg.num_heads
    return out, score, maps, received


class Mlp(nn.Module):
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    x = nn.Dense(self.mlp_dim, kernel_init=_trunc_normal(), dtype=self.dtype, name="fc1")(x)
    x = jax.nn.relu6(x)
    return nn.Dense(d, kernel_init=_trunc_normal(), dtype=self.dtype, name="fc2")(x)


def layer_norm(name: str | None = None, dtype: Any = jnp.float32, **kwargs) -> nn.LayerNorm:
  """The model's LayerNorm (torch's eps and two-pass variance); `parent=None` builds an unbound
  one to `.apply` to a parameter subtree (ViTNT-FIQA's use of the final norm inside the scan)."""
  return nn.LayerNorm(epsilon=LN_EPS, use_fast_variance=False, dtype=dtype, name=name, **kwargs)


class Block(nn.Module):
  """Pre-norm block, one scan step: (x, drop_rate) → (x', per-exit outputs).

  With `vitnt` the step is ((x, ViTNT state), drop_rate, (selected, compare), final-norm params)
  → ((x', state'), outputs): see `vitnt_step`.
  """
  config: ViTConfig
  dtype: Any = jnp.float32
  train: bool = False
  return_maps: bool = False
  keep_all_tokens: bool = False
  explicit_stats: bool = False
  vitnt: VitntSpec | None = None

  @nn.compact
  def __call__(self, carry, drop_rate: jnp.ndarray, flags=None, norm_params=None):
    x, state = carry if self.vitnt is not None else (carry, None)
    attn_out, score, maps, received = Attention(self.config, self.dtype, self.return_maps,
                                                self.explicit_stats, self.vitnt is not None,
                                                name="attn")(layer_norm("norm1")(x))
    x = x + self._drop_path(attn_out, drop_rate)
    mlp_out = Mlp(self.config.mlp_dim, self.dtype, name="mlp")(layer_norm("norm2")(x))
    x = x + self._drop_path(mlp_out, drop_rate)
    outputs = {"attn_score": score}
    if maps is not None:
      outputs["attn_map"] = maps
    if not self.train:
      outputs["tokens"] = x if self.keep_all_tokens else x[:, 0]
    if self.vitnt is None:
      return x, outputs
    state = vitnt_step(state, x, received, flags, norm_params, self.vitnt,
                       int(self.config.has_quality_token))
    return (x, state), outputs

  def _drop_path(self, branch: jnp.ndarray, rate: jnp.ndarray) -> jnp.ndarray:
    """Stochastic depth per sample (train only), torch/timm semantics."""
    if not self.train:
      return branch
    keep = 1.0 - rate
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (branch.shape[0], 1, 1))
    return branch * mask.astype(branch.dtype) / keep.astype(branch.dtype)


def vitnt_step(state: Mapping[str, jnp.ndarray], x: jnp.ndarray, received: jnp.ndarray,
               flags: tuple[jnp.ndarray, jnp.ndarray], norm_params: Any, spec: VitntSpec,
               first_patch: int) -> dict[str, jnp.ndarray]:
  """ViTNT-FIQA's running sums after one block (docs/methods.md): the block's patch tokens →
  the final LayerNorm → L2 per token (z); if the block is selected and not the first selected,
  add ‖z − z_prev‖ per patch to `distance`; a selected block's z becomes `previous` and its
  received attention (patches only) the `weight` ("last") or adds to it ("mean")."""
  selected, compare = flags
  z = layer_norm(dtype=jnp.float32, parent=None).apply(
      {"params": norm_params}, x[:, first_patch:].astype(jnp.float32))
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  step = jnp.sqrt(jnp.sum(jnp.square(z - state["previous"]), axis=-1))          # [B, N]
  weight = received[:, first_patch:]
  if spec.attention == "mean":
    weight = state["weight"] + jnp.where(selected, weight, 0.0)
  else:
    weight = jnp.where(selected, weight, state["weight"])
  return {"previous": jnp.where(selected, z, state["previous"]),
          "distance": state["distance"] + jnp.where(compare, step, 0.0),
          "weight": weight}


def vitnt_outputs(state: Mapping[str, jnp.ndarray], spec: VitntSpec) -> dict[str, jnp.ndarray]:
  """The scan's ViTNT sums → `vitnt_distance` [B, N] (each patch's mean distance between
  consecutive selected blocks) and `vitnt_weight` [B, N] (its attention weight, summing to 1)."""
  weight = state["weight"]
  return {"vitnt_distance": state["distance"] / (len(spec.blocks) - 1),
          "vitnt_weight": weight / jnp.sum(weight, axis=1, keepdims=True)}


# ----------------------------------------------------------------------------------------------
# The model


class VisionTransformer(nn.Module):
  """ViT-FIQA / FR ViT; `__call__` returns `(output, out_dict)` (see the module docstring)."""
  config: ViTConfig
  depth: int | None = None       # run only the first k blocks (a fixed early exit)
  dtype: Any = jnp.float32       # matmul dtype; jnp.bfloat16 keeps norms, heads, stats in f32
  explicit_attention_stats: bool = False  # N×N reference path for tests

  @property
  def num_blocks(self) -> int:
    k = self.config.depth if self.depth is None else self.depth
    if not 1 <= k <= self.config.depth:
      raise ValueError(f"depth must be in 1..{self.config.depth}, got {k}")
    return k

  @nn.compact
  def __call__(self, images: jnp.ndarray, *, train: bool = False, return_attn_maps: bool = False,
               return_all_embeddings: bool = False, vitnt: VitntSpec | None = None):
    cfg = self.config
    if images.ndim != 4 or images.shape[1:] != (cfg.img_size, cfg.img_size, 3):
      raise ValueError(f"images must be [B, {cfg.img_size}, {cfg.img_size}, 3] (NHWC, RGB in "
                       f"[-1, 1]); got shape {tuple(images.shape)}")
    self._check_block_params()
    x = self._embed(images)                                        # [B, T, D]
    b, t, d = x.shape
    mask_token = (self.param("mask_token", nn.initializers.normal(0.02), (1, 1, d))
                  if cfg.has_mask_token else None)

    if train:
      if mask_token is None and cfg.mask_ratio > 0:
        raise ValueError("training with token masking needs has_mask_token=True")
      x, restore = self._mask_tokens(x) if cfg.mask_ratio > 0 else (x, None)
    keep_all = (not train) and (cfg.mode in ("crfiqa", "full", "fr") or return_all_embeddings)
    x, per_block = self._blocks(x, train, return_attn_maps, keep_all, vitnt)
    out = {"attn_scores": per_block["attn_score"].T, **per_block.get("vitnt", {})}   # [B, L]
    if return_attn_maps:
      out["attn_maps"] = jnp.transpose(per_block["attn_map"], (1, 0, 2))      # [B, L, Np]

    norm = layer_norm("norm", jnp.float32)
    feature = FeatureHead(cfg.embed_dim, self.dtype, name="feature")
    quality = (QualityHead(cfg.quality_head_in, name="head_qs") if cfg.mode in QUALITY_MODES
               else None)

    if train:
      xn = norm(x.astype(jnp.float32))
      if restore is not None:
        fill = jnp.broadcast_to(mask_token.astype(jnp.float32), (b, t - xn.shape[1], d))
        xn = jnp.take_along_axis(jnp.concatenate([xn, fill], axis=1), restore[..., None], axis=1)
      out["embedding"] = feature(self._flatten_for_feature(xn), train=True)
      output = out["embedding"]
      if quality is not None:
        out["quality"] = quality(self._quality_input(xn, out["embedding"]), train=True)
        output = out["quality"]
      return output, out

    tokens = per_block["tokens"]                                  # [L, B, (T,) D] raw stream
    num_exits = tokens.shape[0]
    xn = norm(tokens.astype(jnp.float32))
    if keep_all:
      flat = self._flatten_for_feature(xn.reshape((num_exits * b,) + xn.shape[2:]))
      embeddings = feature(flat).reshape(num_exits, b, cfg.embed_dim)
    else:  # token mode, final exit only: the embedding needs the last block's tokens
      last = norm(x.astype(jnp.float32))
      embeddings = feature(self._flatten_for_feature(last))[None]
    out["embedding"] = embeddings[-1]
    if return_all_embeddings:
      out["embeddings"] = jnp.transpose(embeddings, (1, 0, 2))
    if quality is None:
      return out["embedding"], out
    if cfg.mode == "token":
      head_in = xn[:, :, 0] if keep_all else xn                   # [L, B, D]
    else:
      head_in = embeddings                                         # [L, B, E]
    exit_scores = quality(head_in.reshape(num_exits * b, -1)).reshape(num_exits, b).T
    out["exit_scores"] = exit_scores
    return exit_scores[:, -1], out

  # -- pieces ----------------------------------------------------------------------------------

  def _embed(self, images: jnp.ndarray) -> jnp.ndarray:
    cfg = self.config
    x = PatchEmbed(cfg.width, cfg.patch_size, self.dtype, name="patch_embed")(images)
    b = x.shape[0]
    if cfg.has_quality_token:
      qs = self.param("qs_token", nn.initializers.normal(1e-6), (1, 1, cfg.width))
      x = jnp.concatenate([jnp.broadcast_to(qs, (b, 1, cfg.width)).astype(x.dtype), x], axis=1)
    pos = self.param("pos_embed", _trunc_normal(), (1, cfg.num_tokens, cfg.width))
    return (x + pos).astype(jnp.float32)

  def _mask_tokens(self, x: jnp.ndarray):
    """Keeps int(T·(1−mask_ratio)) random tokens (quality token included, docs/methods.md)."""
    b, t, _ = x.shape
    keep = int(t * (1 - self.config.mask_ratio))
    noise = jax.random.uniform(self.make_rng("masking"), (b, t))
    shuffle = jnp.argsort(noise, axis=1)
    restore = jnp.argsort(shuffle, axis=1)
    kept = jnp.take_along_axis(x, shuffle[:, :keep, None], axis=1)
    self.sow("intermediates", "kept_indices", shuffle[:, :keep])
    return kept, restore

  def _blocks(self, x: jnp.ndarray, train: bool, return_maps: bool, keep_all: bool,
              vitnt: VitntSpec | None = None):
    """(stream, per-block outputs [L, ...]); with `vitnt` the outputs also hold "vitnt" (the
    `vitnt_outputs`). At init the final norm has no parameters yet and ViTNT is left out."""
    if train and vitnt is not None:
      raise ValueError("ViTNT-FIQA statistics are an inference output; pass vitnt=None to train")
    cfg = self.config
    k = self.num_blocks
    rates = jnp.asarray(np.linspace(0.0, cfg.drop_path_rate, cfg.depth)[:k], jnp.float32)
    norm_params = None if vitnt is None else self.get_variable("params", "norm")
    vitnt = None if norm_params is None else vitnt
    scanned = nn.scan(Block, variable_axes={"params": 0},
                      split_rngs={"params": True, "dropout": True},
                      in_axes=0 if vitnt is None else (0, 0, nn.broadcast), length=k)
    blocks = scanned(cfg, self.dtype, train, return_maps, keep_all,
                     self.explicit_attention_stats, vitnt, name="blocks")
    if vitnt is None:
      return blocks(x, rates)
    selected, compare = vitnt.flags(k)
    b, n = x.shape[0], cfg.num_patches
    state = {"previous": jnp.zeros((b, n, cfg.width), jnp.float32),
             "distance": jnp.zeros((b, n), jnp.float32), "weight": jnp.zeros((b, n), jnp.float32)}
    (x, state), per_block = blocks((x, state), rates,
                                   (jnp.asarray(selected), jnp.asarray(compare)), norm_params)
    return x, {**per_block, "vitnt": vitnt_outputs(state, vitnt)}

  def _flatten_for_feature(self, xn: jnp.ndarray) -> jnp.ndarray:
    """Token-major flatten (index t·D + d); token mode drops the quality token."""
    if self.config.mode == "token":
      xn = xn[:, 1:]
    return xn.reshape(xn.shape[0], -1)

  def _quality_input(self, xn: jnp.ndarray, embedding: jnp.ndarray) -> jnp.ndarray:
    return xn[:, 0] if self.config.mode == "token" else embedding

  def _check_block_params(self) -> None:
    """A truncated program needs sliced block parameters; say so instead of a scan error."""
    if self.is_initializing() or "params" not in self.variables:
      return
    blocks = self.variables["params"].get("blocks")
    if blocks is None:
      return
    have = jax.tree.leaves(blocks)[0].shape[0]
    if have != self.num_blocks:
      raise ValueError(f"the block parameters hold {have} blocks but this program runs "
                       f"{self.num_blocks}; pass exits.truncate_variables(variables, "
                       f"{self.num_blocks}) to a VisionTransformer(depth={self.num_blocks})")


class PatchEmbed(nn.Module):
  """`patch_embed.proj`: Conv p×p / p, VALID (rows and columns past grid·p are never seen)."""
  width: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                name="proj")(images.astype(self.dtype))
    return x.reshape(x.shape[0], -1, self.width)                  # row-major patch order


# ----------------------------------------------------------------------------------------------
# Cost per exit (docs/methods.md) — one place for the formula.


def _block_gflops(cfg: ViTConfig) -> float:
  """2·MACs of one block: the linears over every token, the two attention matmuls counted
  with the patch tokens only (as the papers' counter does)."""
  d, m, n_tok, n_att = cfg.width, cfg.mlp_dim, cfg.num_tokens, cfg.num_patches
  linear_macs = n_tok * (d * 3 * d + d * d + d * m + m * d)
  attn_macs = 2 * n_att * n_att * d
  return 2 * (linear_macs + attn_macs) / 1e9


def _head_gflops(cfg: ViTConfig) -> float:
  if cfg.mode == "token":
    return 2 * cfg.width / 1e9              # BN + the width→1 regression on the token: ≈ 1 kFLOP
  e = cfg.embed_dim
  feature = cfg.feature_in * e + e * e
  return 2 * (feature + (e if cfg.mode in QUALITY_MODES else 0)) / 1e9


def gflops_program(cfg: ViTConfig, blocks, heads) -> np.ndarray:
  """GFLOPs of a program that embeds the patches, runs `blocks` blocks and evaluates `heads`
  exit heads (arrays broadcast): the one formula behind every per-exit, fusion and cascade
  cost (docs/methods.md)."""
  patch = 2 * cfg.num_patches * 3 * cfg.patch_size ** 2 * cfg.width / 1e9
  return (patch + np.asarray(blocks, np.float64) * _block_gflops(cfg)
          + np.asarray(heads, np.float64) * _head_gflops(cfg))


def gflops_per_exit(cfg: ViTConfig) -> np.ndarray:
  """GFLOPs to score at exit l = 1..L: patch embedding + l blocks + the head (poster numbers:
  ViT-S (C) exit 7 = 6.75, exit 12 = 11.49; (T) exit 6 = 5.76)."""
  return gflops_program(cfg, np.arange(1, cfg.depth + 1), 1)


def gflops_fusion(cfg: ViTConfig, num_exits: int | None = None) -> float:
  """GFLOPs of a fusion of exits 1..k (default all L): k blocks once plus a head at each."""
  k = cfg.depth if num_exits is None else int(num_exits)
  return float(gflops_program(cfg, k, k))
