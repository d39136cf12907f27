"""PyTorch checkpoints ⇄ Flax variables, strictly: key maps per family, detection, torch I/O.

    from exfiqa_jax import convert
    variables, model_config = convert.convert_state_dict(state_dict)

Every conversion is verified by converting back and comparing bit for bit (docs/checkpoints.md).
Files in, directories out (pt_to_directory, directory_to_pt) are exfiqa_jax/checkpoints.py's.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from exfiqa_jax.convert import families, torch_io
from exfiqa_jax.convert.strict import CheckpointError

__all__ = ["CheckpointError", "convert_state_dict", "check_finite", "check_round_trip",
           "families", "torch_io"]


def convert_state_dict(sd: Mapping[str, np.ndarray], num_heads: int | None = None,
                       family: str | None = None, source: str = "the state dict", **flags: Any
                       ) -> tuple[dict, dict[str, Any]]:
  """Unwrapped state dict → ({"params", "batch_stats"}, model_config); strict, verified.
  `source` names the checkpoint in errors (NaN/inf weights are refused as such); `num_heads`
  None or 0 = the architecture's own count (convert/vit_keys.py, choose_heads)."""
  check_finite(sd, source)
  fam = families.detect_family(sd, family)
  config = fam.infer_config(sd, num_heads=num_heads, source=source, **flags)
  variables = fam.to_flax(sd, config)
  check_round_trip(sd, fam.to_torch(variables, config))
  return variables, config


def check_finite(sd: Mapping[str, Any], source: str = "the state dict") -> None:
  """CheckpointError naming the tensors that hold NaN or inf (a damaged file or a diverged
  training run: every score computed from it would be NaN)."""
  bad = [k for k, v in sd.items()
         if np.issubdtype(np.asarray(v).dtype, np.floating) and not np.isfinite(v).all()]
  if bad:
    raise CheckpointError(f"{source} holds NaN/inf weights in {len(bad)} tensor(s): {bad[:10]}; "
                          "the file is damaged or its training diverged. Use an earlier or a "
                          "freshly downloaded checkpoint.")


def check_round_trip(sd: Mapping[str, np.ndarray], back: Mapping[str, np.ndarray]) -> None:
  """Every converted-back tensor equals the input bit for bit (num_batches_tracked aside)."""
  bad = [k for k in back if not k.endswith("num_batches_tracked") and (
      k not in sd or not np.array_equal(np.asarray(sd[k], np.float32), back[k]))]
  if bad:
    raise CheckpointError(f"internal error: converting back does not reproduce {bad[:10]}; "
                          "please report it with the checkpoint's key list")
