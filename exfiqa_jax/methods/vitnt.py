"""ViTNT-FIQA (gurayozgur/ViTNT-FIQA): how much each patch token still moves between blocks.

Training-free, on a ViT (docs/methods.md). For the selected blocks b_1 < … < b_T: each block's
patch tokens → the model's final LayerNorm → L2 per token → z_b; per patch p, d_p = the mean of
‖z_{b_{i+1},p} − z_{b_i,p}‖ over the T − 1 consecutive pairs; q_p = 2 / (1 + exp(s·d_p)). Columns:
`vitnt` = Σ_p w_p q_p with w the softmax attention each patch receives in the last selected block
(averaged over heads, summed over queries, normalised to sum 1; `attention="mean"`: averaged
over the selected blocks), `vitnt_uniform` = mean_p q_p. Higher = better (stable tokens).

Official defaults (evaluation/run.sh, IJB-C on the CVLFace ViT-B): s = 8, attention weights from
the last selected block, blocks 0..19 of 24; `calculate_ntfiq`'s own default is every block.
The official loop runs *only* the selected blocks, in order, so a subset that is not a prefix is
a different network; `scorer` reproduces that by running the selected blocks' parameters as one
program. For every block, or the first k, that is the model's own pass, and ViTNT can ride in the
pass that also gives the embedding and ATTN-FIQA: `module.apply(..., vitnt=in_pass_spec(...))`,
then `columns_from_outputs` (models/vit.py carries the sums through the block scan: the previous
selected block's normalised tokens [B, N, D] and two [B, N] sums, never one [B, N, D] per
block). Cost: the plain forward pass plus one LayerNorm, one distance and one attention column
sum per patch and block.

The FR ViTs (mode "fr") have only patch tokens, as in the paper. On ViT-FIQA models (modes token /
crfiqa / full) the patches are the tokens after the quality token and the attention weights the
attention those patches receive, renormalised over patches: the toolkit's extension.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax import columns
from exfiqa_jax.methods import registry
from exfiqa_jax.methods import scorer as scorer_lib
from exfiqa_jax.models import vit

METHOD = registry.VITNT
COLUMNS = (columns.VITNT, columns.VITNT_UNIFORM)
DEFAULT_SCALING = 8.0


def patch_quality(distance: jax.Array, scaling: float = DEFAULT_SCALING) -> jax.Array:
  """q = 2 / (1 + exp(s·d)), the official per-patch quality (1 for a token that never moves)."""
  return 2.0 * (1.0 / (1.0 + jnp.exp(scaling * distance)))


def columns_from_outputs(out: Mapping[str, jax.Array],
                         scaling: float = DEFAULT_SCALING) -> dict[str, jax.Array]:
  """The model's `vitnt_distance` / `vitnt_weight` [B, N] → {vitnt, vitnt_uniform} [B]."""
  q = patch_quality(out["vitnt_distance"], scaling)
  return {columns.VITNT: jnp.sum(q * out["vitnt_weight"], axis=1),
          columns.VITNT_UNIFORM: jnp.mean(q, axis=1)}


def check_blocks(blocks: Sequence[int] | None, num_blocks: int) -> tuple[int, ...]:
  """0-based block indices (None/empty = all of the program's `num_blocks`), validated by
  `vit.VitntSpec`: strictly increasing, at least two, in range."""
  chosen = tuple(range(num_blocks)) if not blocks else tuple(int(b) for b in blocks)
  vit.VitntSpec(chosen).flags(num_blocks)
  return chosen


def in_pass_spec(num_blocks: int, blocks: Sequence[int] | None = None,
                 attention: str = "last") -> vit.VitntSpec:
  """The spec for the model's own pass of `num_blocks` blocks: every block or the first k (the
  official semantics). Another subset needs its own program (`scorer`)."""
  chosen = check_blocks(blocks, num_blocks)
  if chosen != tuple(range(len(chosen))):
    raise ValueError(f"blocks {chosen} are not the first {len(chosen)} blocks: the official "
                     "ViTNT-FIQA runs only the selected blocks, so this subset is its own "
                     "program (methods.vitnt.scorer), not part of the model's pass")
  return vit.VitntSpec(chosen, attention)


def selected_program(module: vit.VisionTransformer, variables: Any,
                     blocks: tuple[int, ...]) -> tuple[vit.VisionTransformer, Any]:
  """(module, variables) running only `blocks` of the model, in order (what the official loop
  runs): the first k blocks are the truncated program; any other subset stacks those blocks'
  parameters into a len(blocks)-block program."""
  if blocks == tuple(range(module.num_blocks)):
    return module, variables
  params = dict(variables["params"])
  index = np.asarray(blocks)
  params["blocks"] = jax.tree.map(lambda a: np.asarray(a)[index], params["blocks"])
  return module.clone(depth=len(blocks)), {**variables, "params": params}


def scorer(module: Any, variables: Any, model_config: Mapping[str, Any], *,
           blocks: Sequence[int] | None = None, scaling: float = DEFAULT_SCALING,
           attention: str = "last") -> scorer_lib.Scorer:
  """images [B, S, S, 3] (uint8 RGB, or float32 in [-1, 1]) → {vitnt, vitnt_uniform} [B].

  `blocks`: 0-based indices of the blocks to compare (None = all, as `calculate_ntfiq`);
  `attention`: "last" (official) or "mean" (`last_block_attention_only=False`)."""
  if not isinstance(module, vit.VisionTransformer):
    raise scorer_lib.wrong_model(METHOD, "a ViT (a face-recognition ViT, or a ViT-FIQA model "
                                 "for the patch-token extension)", model_config)
  chosen = check_blocks(blocks, module.num_blocks)
  program, program_variables = selected_program(module, variables, chosen)
  spec = vit.VitntSpec(tuple(range(len(chosen))), attention)
  input_scale = model_config.get("input_scale", "minus1_1")

  def forward(variables, images):
    images = scorer_lib.prepare_images(images, input_scale)
    _, out = program.apply(variables, images, vitnt=spec)
    return columns_from_outputs(out, scaling)

  return scorer_lib.bind(METHOD, COLUMNS, forward, program_variables)
