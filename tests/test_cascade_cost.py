"""The cascade's measured cost model (exfiqa_jax/models/cascade_cost.py): its arithmetic against
the engine's bucket schedule, its table kept per device and model, and its predicted ordering of
two cascades against their measured wall time where one segment is made slow on purpose."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from exfiqa_jax.calibrate import cascade
from exfiqa_jax.models import cascade_cost, exits
from tests.test_exits import quality_model, random_images


def _table(per_row: dict[tuple[int, int], float], launch: float = 1.0, full: float = 9.0
           ) -> dict[str, float]:
  """Seconds per call = launch + rows · per-row cost, for buckets 1..8."""
  out = {}
  for b in (1, 2, 4, 8):
    for (i, j), c in per_row.items():
      out[f"segment {i}-{j} x{b}"] = launch + b * c
    out[f"full x{b}"] = launch + b * full
    out[f"compaction x{b}"] = 0.5
  return out


def test_prediction_follows_the_engines_schedule_and_per_image_costs():
  cm = cascade_cost.CostModel({"k": 1}, _table({(0, 1): 2.0, (1, 3): 3.0, (0, 3): 5.0}))
  # 13 images enter segment 1 (one full bucket of 8, one bucket of 8 for the 5 left), 6 go on
  # (one bucket of 8) and are compacted on the host
  assert cm.predict_seconds((1, 3), (13, 6), (1, 2, 4, 8)) == pytest.approx(
      2 * (1 + 8 * 2.0) + (1 + 8 * 3.0) + 6 * 0.5)
  assert cm.predict_seconds((3,), (3,), (1, 2, 4, 8)) == pytest.approx(1 + 4 * 5.0)
  assert cm.predict_full_seconds(13, (1, 2, 4, 8)) == pytest.approx(2 * (1 + 8 * 9.0))
  np.testing.assert_allclose(cm.per_image((1, 3), 8),
                             [(1 + 16) / 8, (1 + 16) / 8 + (1 + 24) / 8 + 0.5])
  assert cm.full_per_image(8) == pytest.approx((1 + 72) / 8)
  with pytest.raises(KeyError, match="no caller"):
    cm.segment(0, 2, 8)


def test_table_is_measured_once_and_kept_per_device_and_model(tmp_path):
  made = []

  def caller(kind, start, stop, rows):
    made.append((kind, start, stop, rows))
    return lambda: time.sleep(0.0005 * rows)

  key = cascade_cost.cost_key({"mode": "token", "depth": 4, "width": 32}, "float32")
  assert key["device"]["platform"] and key["model"] == {"mode": "token", "depth": 4, "width": 32}
  folder = str(tmp_path / "costs")
  cm = cascade_cost.CostModel.open(key, caller, folder, repeats=2)
  cm.per_image((2, 4), 8)
  cm.per_image((2, 4), 8)                  # nothing measured twice
  assert len(made) == 3 and cm.measured == 3
  assert cm.segment(0, 2, 8) >= 0.004 and cm.compaction(8) < cm.segment(0, 2, 8)   # per row
  cm.save()
  again = cascade_cost.CostModel.open(key, caller, folder)
  assert again.table == cm.table
  again.full(8)
  assert len(made) == 4                    # only the entry it did not have
  other = cascade_cost.CostModel.open({**key, "dtype": "bfloat16"}, caller, folder)
  assert other.table == {} and other.path != cm.path
  assert cascade_cost.CostModel.folder_for("") is None
  assert cascade_cost.CostModel.folder_for(str(tmp_path / "xla")) == str(tmp_path / cascade_cost.COST_DIR)


def test_quick_programs_get_more_rounds_until_each_has_run_min_seconds():
  """time_calls: at least `repeats` rounds, and more for quick calls, until each has run
  `min_seconds` in all (MAX_ROUNDS at most); a slow call stops at `repeats` rounds, also when a
  quick one goes on beside it."""
  counts = {"quick": 0, "slow": 0}

  def call(name, seconds):
    def run():
      counts[name] += 1
      time.sleep(seconds)
    return run

  cascade_cost.time_calls({"quick": call("quick", 0.001), "slow": call("slow", 0.03)},
                          repeats=2, warmups=0, min_seconds=0.05)
  assert 2 < counts["quick"] <= cascade_cost.MAX_ROUNDS     # about 0.05 s of 1-ms calls
  assert counts["slow"] == 2
  counts["quick"] = 0
  cascade_cost.time_calls({"quick": call("quick", 0.0)}, repeats=2, warmups=0, min_seconds=60)
  assert counts["quick"] == cascade_cost.MAX_ROUNDS


def test_prepare_measures_every_entry_of_a_calibration_together_in_turns():
  """prepare(exits, rows): every segment between two candidate exits (or from the start), the
  full pass and the compaction, timed in interleaved rounds: a burst of load from another job
  during one round costs every entry that round alike, and the least per entry ignores it."""
  order = []
  burst = {"left": 0}

  def caller(kind, start, stop, rows):
    name = f"{kind} {start}-{stop}"

    def call():
      order.append(name)
      time.sleep(0.002 + (0.02 if burst["left"] > 0 else 0.0))
      burst["left"] -= 1
    return call

  cm = cascade_cost.CostModel({"k": 1}, caller=caller, repeats=3, min_seconds=0.0)
  cm.prepare((1, 2, 4), 8)
  assert sorted(cm.table) == sorted(
      ["segment 0-1 x8", "segment 0-2 x8", "segment 0-4 x8", "segment 1-2 x8",
       "segment 1-4 x8", "segment 2-4 x8", "full x8", "compaction x8"])
  timed = order[2 * 8:]                    # after two warm-up calls each
  assert len(timed) == 3 * 8 and all(len(set(timed[r * 8:(r + 1) * 8])) == 8 for r in range(3))
  assert timed[:8] != timed[8:16]          # the order rotates from round to round
  cm.prepare((1, 2, 4), 8)
  assert len(order) == 2 * 8 + 3 * 8       # nothing measured again
  # load for as long as the warm-up and the first round last (entry by entry, it would
  # have slowed every timed call of the first few entries): later rounds give each its time
  slowed = cascade_cost.CostModel({"k": 1}, caller=caller, repeats=3, min_seconds=0.0)
  burst["left"] = 2 * 8 + 8
  slowed.prepare((1, 2, 4), 8)
  assert [k for k, v in slowed.table.items() if k != "compaction x8" and v > 0.015] == []


def test_predicted_order_of_two_cascades_matches_the_measured_one_with_a_slow_segment():
  # Two cascades on one tiny model: A leaves every image at exit 1, B at exit 2. A runs fewer
  # blocks (fewer GFLOPs), but its first segment is made slow on purpose (a sleep around the
  # program), so A is the slower one: the cost model must say so, as the clock does.
  model = quality_model("token", seed=5, batch_size=8)
  a = exits.CascadeThresholds((1, 4), (math.inf,), (math.inf,), 0.0)    # all rejected at 1
  b = exits.CascadeThresholds((2, 4), (math.inf,), (math.inf,), 0.0)    # all rejected at 2
  engine = model.cascade_engine(a.exits)
  fn, variables = engine.programs[(0, 1)]

  def slow(*args):
    time.sleep(0.03)
    return fn(*args)

  engine.programs[(0, 1)] = (slow, variables)
  images = random_images(16, seed=6)
  cm = model.cascade_costs(repeats=2)
  sizes = exits.bucket_ladder(model.batch_size)
  predicted = {t.exits: cm.predict_seconds(t.exits, (16, 0), sizes) for t in (a, b)}
  measured = {t.exits: cascade_cost.time_call(lambda t=t: model.cascade(images, t), 3)
              for t in (a, b)}
  flops = {t.exits: float(model.cascade(images, t).gflops.mean()) for t in (a, b)}
  assert flops[(1, 4)] < flops[(2, 4)]
  assert predicted[(1, 4)] > predicted[(2, 4)] and measured[(1, 4)] > measured[(2, 4)]


def test_calibration_on_measured_seconds_keeps_the_exit_that_saves_time_not_flops():
  # exit 1 decides every image but its segment is slow (embedding-bound, say); exit 2 decides
  # them too and its segment is quick: GFLOPs choose exit 1, seconds exit 2
  cm = cascade_cost.CostModel({"k": 1}, _table({(0, 1): 4.0, (0, 2): 1.0, (1, 2): 1.0,
                                                (1, 4): 2.0, (2, 4): 2.0, (0, 4): 3.0}))
  s = np.stack([np.linspace(-1, 1, 200)] * 4, 1).astype(np.float32)   # every exit decides
  by_time = cascade.calibrate_cascade(s, (1, 2, 4), 0.0, 0.99,
                                      costs=lambda ex: cm.per_image(ex, 8))
  by_flops = cascade.calibrate_cascade(s, (1, 2, 4), 0.0, 0.99)     # cost = blocks run
  assert by_time.exits == (2, 4) and by_flops.exits[0] == 1
  assert by_time.mean_gflops == pytest.approx(cm.per_image((2, 4), 8)[0])
