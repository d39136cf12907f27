"""The 0–100 mapping (exfiqa_jax/quality_mapping.py): monotone, invertible, saved and loaded
with a model, applied to a score dict of a truncated program."""
from __future__ import annotations

import numpy as np
import pytest

from exfiqa_jax import quality_mapping


def _exit_matrix(n, depth=4, seed=0):
  """Exit scores that get more informative with depth (like EX-FIQA's)."""
  rng = np.random.default_rng(seed)
  z = rng.normal(size=n)
  return np.stack([z * (0.4 + 0.3 * l) + rng.normal(size=n) for l in range(depth)],
                  1).astype(np.float32)



@pytest.mark.parametrize("kind", quality_mapping.MAPPING_KINDS)
def test_mapping_is_monotone_and_round_trips(kind, tmp_path):
  rng = np.random.default_rng(2)
  ref = {"exit_1": np.round(rng.normal(size=400), 2),          # ties
         "exit_2": rng.gamma(2.0, size=400)}
  mapping = quality_mapping.fit_mapping(ref, kind=kind)
  for name, raw in ref.items():
    m = mapping.columns[name]
    lo, hi = (min(m.x), max(m.x)) if kind == "quantile" else (raw.min(), raw.max())
    x = np.sort(rng.uniform(lo, hi, 300))
    y = m(x)
    assert np.all(np.diff(y) > 0) and np.all((y >= 0) & (y <= 100))    # strictly monotone
    np.testing.assert_allclose(m.inverse(y), x, rtol=1e-9, atol=1e-9 * (hi - lo))
    yy = rng.uniform(0, 100, 300) if kind == "quantile" else rng.uniform(1, 99, 300)
    np.testing.assert_allclose(m(m.inverse(yy)), yy, atol=1e-8)
    if kind == "quantile":       # clipped outside the reference range, ~percentile inside
      assert m(lo - 1) == 0 and m(hi + 1) == 100
      mid_rank = np.mean(raw[:, None] < raw[None], 0) + np.mean(raw[:, None] == raw[None], 0) / 2
      assert np.abs(m(raw) - 100 * mid_rank).max() < 3
  path = quality_mapping.save_mapping(tmp_path, mapping)
  assert path.endswith(quality_mapping.MAPPING_FILE)
  back = quality_mapping.load_mapping(tmp_path)
  assert back.to_dict() == mapping.to_dict()
  out = back.apply({"exit_1": ref["exit_1"][:5]})
  assert list(out) == ["q100_exit_1"]
  assert quality_mapping.load_mapping(tmp_path / "nothing") is None


def test_mapping_of_a_score_dict_skips_fusions_of_a_truncated_program():
  s = _exit_matrix(200, 3)
  scores = {"exit_scores": s, "ex_fiqa_f": s.mean(1), "ex_fiqa_fw": s @ np.array([1, 2, 3.]) / 6}
  mapping = quality_mapping.fit_mapping(scores)
  assert list(mapping.apply(scores)) == ["q100_exit_1", "q100_exit_2", "q100_exit_3",
                                         "q100_ex_fiqa_f", "q100_ex_fiqa_fw"]
  truncated = {"exit_scores": s[:, :2], "ex_fiqa_f": s[:, :2].mean(1), "ex_fiqa_fw": s[:, 1]}
  assert list(mapping.apply(truncated)) == ["q100_exit_1", "q100_exit_2"]
