"""The 0–100 mapping (exfiqa_jax/quality_mapping.py): monotone, invertible, saved and loaded
with a model, applied to a score dict of a truncated program."""
from __future__ import annotations

import json

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


# ------------------------------------------------------------- hand-edited quality_mapping.json
def _saved(tmp_path, kind="quantile") -> dict:
  """A mapping fitted on a 3-exit score dict, as its file holds it."""
  s = _exit_matrix(60, 3)
  mapping = quality_mapping.fit_mapping({"exit_scores": s, "ex_fiqa_f": s.mean(1)}, kind=kind,
                                        knots=6)
  return json.loads(open(quality_mapping.save_mapping(tmp_path, mapping)).read())


def _set(path, value):
  """An edit: sets d[path[0]][path[1]]... = value (value None: deletes the entry)."""
  def edit(d):
    for key in path[:-1]:
      d = d[key]
    if value is None:
      del d[path[-1]]
    else:
      d[path[-1]] = value
  return edit


NAN, INF = float("nan"), float("inf")
X1 = ("columns", "exit_1", "x")
BROKEN = {   # name: (kind, edit, what the message says)
    "NaN knot": ("quantile", _set(X1 + (2,), NAN), r"'exit_1'.*x\[2\] must be finite, got nan"),
    "inf value": ("quantile", _set(("columns", "exit_2", "y", 1), INF), r"y\[1\] must be finite"),
    "knots not increasing": ("quantile", _set(X1 + (3,), -50.0),
                             r"x must be strictly increasing: x\[3\] = -50"),
    "values not increasing": ("quantile", _set(("columns", "ex_fiqa_f", "y", 2), 0.0),
                              r"'ex_fiqa_f'.*y must be strictly increasing"),
    "value above 100": ("quantile", _set(("columns", "exit_3", "y", 5), 101.0),
                        r"y\[5\] must be within \[0, 100\]"),
    "lengths differ": ("quantile", lambda d: d["columns"]["exit_1"]["y"].pop(),
                       r"6 knots x but 5 values y"),
    "knot as text": ("quantile", _set(X1 + (0,), "0.5"), r"x\[0\] must be a number, got '0.5'"),
    "knots not a list": ("quantile", _set(X1, 3.0), r"x must be a non-empty list of numbers"),
    "no knots": ("quantile", _set(X1, []), r"x must be a non-empty list of numbers"),
    "missing field": ("quantile", _set(X1, None), r"'exit_1'.*has no 'x'"),
    "unknown field": ("quantile", _set(("columns", "exit_1", "scale"), 2.0),
                      r"unknown field.*'scale'.*kind, x, y"),
    "unknown column kind": ("quantile", _set(("columns", "exit_1", "kind"), "spline"),
                            r"kind 'spline'.*'quantile', 'logistic'"),
    "column kind differs": ("quantile", _set(("columns", "exit_1"), {
        "kind": "logistic", "loc": 0.0, "scale": 1.0}), r"kind 'logistic'.*file's kind 'quantile'"),
    "unknown kind": ("quantile", _set(("kind",), "cdf"), r"kind 'cdf'"),
    "NaN scale": ("logistic", _set(("columns", "exit_1", "scale"), NAN), r"scale must be finite"),
    "zero scale": ("logistic", _set(("columns", "exit_2", "scale"), 0), r"scale must be > 0"),
    "loc as bool": ("logistic", _set(("columns", "exit_2", "loc"), True), r"loc must be a number"),
    "unknown column": ("quantile", lambda d: d["columns"].__setitem__(
        "exit1", d["columns"].pop("exit_1")), r"'exit1'.*exit_<k>, ex_fiqa_f, ex_fiqa_fw"),
    "exit past num_exits": ("quantile", lambda d: d["columns"].__setitem__(
        "exit_4", d["columns"]["exit_3"]), r"'exit_4'.*meta.num_exits = 3"),
    "num_exits as text": ("quantile", _set(("meta", "num_exits"), "3"),
                          r"meta.num_exits must be a whole number"),
    "no columns": ("quantile", _set(("columns",), {}), r"columns must be a non-empty object"),
    "other version": ("quantile", _set(("version",), 2), r"version 2.*version 1"),
    "other scale": ("quantile", _set(("scale",), [0, 1]), r"scale \[0, 1\].*\[0, 100\]"),
    "other format": ("quantile", _set(("format",), "x"), r"format 'x'"),
    "no format field": ("quantile", lambda d: d.clear() or d.update(x=[1]), r"format None"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_a_hand_edited_mapping_is_refused_naming_the_file(tmp_path, case):
  kind, edit, match = BROKEN[case]
  d = _saved(tmp_path, kind)
  edit(d)
  path = tmp_path / quality_mapping.MAPPING_FILE
  path.write_text(json.dumps(d))           # NaN / Infinity literals, as an editor leaves them
  for load in (lambda: quality_mapping.load_mapping(tmp_path),
               lambda: quality_mapping.mapping_for(None, str(path))):
    with pytest.raises(ValueError, match=match) as e:
      load()
    assert str(e.value).startswith(f"{path}: ") and "--config.quality_mapping=none" in str(e.value)


@pytest.mark.parametrize("text", ["{", "[1, 2]", "\xff"])
def test_an_unreadable_mapping_file_is_named(tmp_path, text):
  path = tmp_path / quality_mapping.MAPPING_FILE
  path.write_bytes(text.encode("latin-1"))
  with pytest.raises(ValueError, match="not a (valid )?quality mapping") as e:
    quality_mapping.load_mapping(tmp_path)
  assert str(e.value).startswith(f"{path}: ")


def test_store_with_model_replaces_a_broken_mapping(tmp_path):
  d = _saved(tmp_path)
  good = quality_mapping.QualityMapping.from_dict(d)
  d["columns"]["exit_1"]["kind"] = "spline"
  (tmp_path / quality_mapping.MAPPING_FILE).write_text(json.dumps(d))
  quality_mapping.store_with_model(tmp_path, good)
  assert quality_mapping.load_mapping(tmp_path).to_dict() == good.to_dict()
