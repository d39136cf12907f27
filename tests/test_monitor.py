"""The training monitor (exfiqa_jax/train/monitor.py): the eval program runs over the pair set's
images in padded device batches, and the eval.csv row equals the metrics computed directly on
the resulting scores (verification accuracy, FIQA pAUC of every exit and of `random`)."""
from __future__ import annotations

import jax
import numpy as np

from exfiqa_jax import parallel
from exfiqa_jax.metrics import comparisons, edc, verification
from exfiqa_jax.train import data as train_data
from exfiqa_jax.train import monitor


def test_evaluate_pairs_equals_the_metrics_of_its_scores():
  rng = np.random.default_rng(0)
  n_img, n_exits = 40, 3
  ident = np.repeat(np.arange(10), 4)
  emb = rng.standard_normal((10, 16))[ident] + 0.7 * rng.standard_normal((n_img, 16))
  exits = rng.random((n_img, n_exits)).astype(np.float32)
  images = np.broadcast_to(np.arange(n_img, dtype=np.uint8)[:, None, None, None],
                           (n_img, 2, 2, 3)).copy()               # image i is filled with i
  pairs = rng.integers(0, n_img, (300, 2))
  pair_set = train_data.ArrayPairs(images, pairs, ident[pairs[:, 0]] == ident[pairs[:, 1]])
  variables = {"embedding": emb.astype(np.float32), "exit_scores": exits}

  @jax.jit
  def eval_fn(v, x):                       # looks each image up by its fill value
    i = x[:, 0, 0, 0].astype(np.int32)
    return {"exit_scores": v["exit_scores"][i], "embedding": v["embedding"][i]}

  got = monitor.evaluate_pairs(eval_fn, variables, pair_set, parallel.mesh(), batch=16,
                               fmr=1e-2, limit=0.3, seed=5)            # 40 = 16 + 16 + 8 padded
  cos = comparisons.pair_scores(emb, pairs)
  image_q = np.concatenate([exits.T, comparisons.random_quality(n_img, 5)[None]])
  fnmr = edc.edc_fnmr(cos, pair_set.is_genuine, comparisons.image_to_pair_quality(image_q, pairs),
                      fmrs=(1e-2,))
  area = edc.pauc(fnmr, edc.FIQA_DISCARD, 0.3)[:, 0]
  best = int(np.argmin(area[:n_exits]))
  assert got["accuracy"] == verification.verification_accuracy(cos, pair_set.is_genuine)
  for k in range(n_exits):
    assert got[f"pauc_exit_{k + 1}"] == area[k]
  assert (got["pauc_last"], got["pauc_random"], got["pauc_best"], got["best_exit"]) == (
      area[n_exits - 1], area[-1], area[best], best + 1)
  assert got["pauc_ratio_last"] == area[n_exits - 1] / area[-1]
