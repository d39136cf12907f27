"""The device mesh: batch rows split over every device, results gathered in order."""
from __future__ import annotations

from exfiqa_jax.testing.subproc import run_python


def test_mesh_and_round_trip_on_eight_devices():
  out = run_python("""
    import numpy as np, jax
    from exfiqa_jax import parallel
    assert parallel.mesh().shape == {"data": 8}
    assert parallel.mesh(2).shape == {"data": 4, "model": 2}
    assert parallel.round_up_to_devices(5) == 8 and parallel.local_batch_size(16) == 16
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    g = parallel.host_batch_to_global(x)
    assert g.sharding.is_equivalent_to(parallel.batch_sharding(), 2)
    assert len(g.addressable_shards) == 8
    np.testing.assert_array_equal(parallel.global_to_host(g), x)
    try:
      parallel.mesh(3)
    except ValueError as e:
      assert "--config.shard_centres" in str(e)
    else:
      raise AssertionError("a model axis of 3 on 8 devices must fail")
    try:
      parallel.local_batch_size(12)
    except ValueError as e:
      assert "multiple of the 8 devices" in str(e)
    print("OK")
  """)
  assert "OK" in out
