"""The training monitor: every `config.eval.every` steps the model being trained scores a
verification pair set on device, and eval.csv gets its 10-fold accuracy and the EDC pAUC (FIQA
convention) of every exit against the seeded `random` baseline (docs/configs.md, `eval.*`)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from exfiqa_jax import parallel
from exfiqa_jax.columns import exit_name
from exfiqa_jax.metrics import comparisons, edc, verification


def embed_and_score(eval_fn, variables, images: np.ndarray, mesh, batch: int
                    ) -> tuple[np.ndarray, np.ndarray]:
  """Runs the eval program over all images -> (exit_scores [N, L], embeddings [N, E])."""
  n_dev = mesh.devices.size
  batch = -(-batch // n_dev) * n_dev
  scores, embs = [], []
  sharding = parallel.batch_sharding(mesh)
  local = batch // jax.process_count()
  for start in range(0, len(images), batch):
    chunk = images[start:start + batch]
    pad = batch - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, 0)])
    rows = chunk[jax.process_index() * local:(jax.process_index() + 1) * local]
    out = eval_fn(variables, jax.make_array_from_process_local_data(sharding, rows))
    out = parallel.global_to_host(out)
    scores.append(out["exit_scores"][:batch - pad])
    embs.append(out["embedding"][:batch - pad])
  return np.concatenate(scores), np.concatenate(embs)


def evaluate_pairs(eval_fn, variables, pairs, mesh, batch: int, fmr: float,
                   limit: float, seed: int = 0) -> dict[str, float]:
  """Verification accuracy and EDC pAUC (FIQA convention) of every exit and a random quality."""
  exit_scores, emb = embed_and_score(eval_fn, variables, pairs.images, mesh, batch)
  cos = comparisons.pair_scores(emb, pairs.pairs)
  genuine = np.asarray(pairs.is_genuine, bool)
  image_q = np.concatenate([exit_scores.T,
                            comparisons.random_quality(len(pairs.images), seed)[None]])
  pair_q = comparisons.image_to_pair_quality(image_q, pairs.pairs)       # [L+1, P]
  discard = edc.FIQA_DISCARD
  fnmr = edc.edc_fnmr(jnp.asarray(cos, jnp.float32), jnp.asarray(genuine),
                      jnp.asarray(pair_q, jnp.float32), fmrs=(fmr,), discard=discard, mode="fiqa")
  area = np.asarray(edc.pauc(fnmr, discard, limit=limit))[:, 0]          # [L+1]
  n_exits = exit_scores.shape[1]
  best = int(np.argmin(area[:n_exits]))
  result = {"accuracy": verification.verification_accuracy(cos, genuine),
            "pauc_last": float(area[n_exits - 1]), "pauc_random": float(area[-1]),
            "pauc_best": float(area[best]), "best_exit": best + 1,
            "pauc_ratio_last": float(area[n_exits - 1] / max(area[-1], 1e-12))}
  for l in range(n_exits):
    result["pauc_" + exit_name(l + 1)] = float(area[l])
  return result
