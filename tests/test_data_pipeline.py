"""Input pipeline: padding and mask, per-row errors, order, 8 devices and 2 hosts (exactly once).

References are plain NumPy slicing of the same random arrays and PIL's own decode.
"""
import concurrent.futures
import json
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from exfiqa_jax.data import pipeline, preprocess
from exfiqa_jax.testing.subproc import run_python

SIZE = 8          # tiny images: the pipeline is shape-agnostic


def _images(n, seed=0, size=SIZE):
  return np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)


def _collect(batches):
  """Concatenated valid rows, images, and every batch's (num_rows, valid) for the checks."""
  batches = list(batches)
  rows = np.concatenate([b.rows[b.valid] for b in batches])
  images = np.concatenate([b.images[b.valid] for b in batches])
  return batches, rows, images


@pytest.mark.parametrize("n,batch,start", [(24, 8, 0), (21, 8, 0), (3, 8, 0), (8, 8, 0),
                                           (29, 8, 5), (17, 4, 16)])
@pytest.mark.parametrize("workers", [0, 3])
def test_padding_and_mask(n, batch, start, workers):
  data = _images(n)
  batches, rows, images = _collect(pipeline.host_batches(
      pipeline.array_reader(data), n, batch, start=start, image_size=SIZE, workers=workers))
  assert len(batches) == -(-(n - start) // batch)
  for k, b in enumerate(batches):
    assert b.images.shape == (batch, SIZE, SIZE, 3) and b.images.dtype == np.uint8
    assert b.start == start + k * batch
    assert b.num_rows == min(batch, n - b.start)
    np.testing.assert_array_equal(b.valid, np.arange(batch) < b.num_rows)
    np.testing.assert_array_equal(b.rows, np.where(b.valid, b.start + np.arange(batch), -1))
    assert not b.images[~b.valid].any(), "padding rows must be zeros"
    assert b.errors == {}
  np.testing.assert_array_equal(rows, np.arange(start, n))
  np.testing.assert_array_equal(images, data[start:])


def test_empty_range_yields_nothing():
  assert list(pipeline.host_batches(pipeline.array_reader(_images(4)), 4, 4, start=4,
                                    image_size=SIZE)) == []


def test_errors_reported_with_their_row():
  n, data = 19, _images(19, seed=1)
  bad = {1, 4, 7, 10, 17}

  def read(rows):
    return data[rows] + 0, [f"row {r} is broken" if r in bad else None for r in rows]

  batches, rows, images = _collect(pipeline.host_batches(read, n, 8, image_size=SIZE,
                                                         workers=2))
  errors = {r: e for b in batches for r, e in b.errors.items()}
  assert errors == {r: f"row {r} is broken" for r in bad}
  good = np.array([r for r in range(n) if r not in bad])
  np.testing.assert_array_equal(rows, good)
  np.testing.assert_array_equal(images, data[good])
  for b in batches:                       # an error row is a zero, invalid row at its slot
    for r in b.errors:
      slot = r - b.start
      assert not b.valid[slot] and not b.images[slot].any() and b.rows[slot] == r


def test_order_preserved_when_reads_finish_out_of_order():
  n, data = 40, _images(40, seed=2)
  rng = np.random.RandomState(3)
  delays = rng.uniform(0, 0.01, n)
  finished, lock = [], threading.Lock()

  def read(rows):
    time.sleep(float(delays[rows].sum()))
    with lock:
      finished.append(int(rows[0]))
    return data[rows]

  _, rows, images = _collect(pipeline.host_batches(read, n, 8, image_size=SIZE, workers=4,
                                                   prefetch=3))
  np.testing.assert_array_equal(rows, np.arange(n))
  np.testing.assert_array_equal(images, data)
  assert sorted(finished) == sorted(set(finished)), "each chunk read exactly once"


def test_reader_exception_reaches_consumer_and_bad_shapes_are_refused():
  data = _images(10)

  def read(rows):
    if 6 in rows:
      raise preprocess.ImageError("cannot decode image six.jpg")
    return data[rows]

  seen = []
  with pytest.raises(preprocess.ImageError, match="six.jpg"):
    for b in pipeline.host_batches(read, 10, 4, image_size=SIZE, workers=2):
      seen.append(b.start)
  assert seen == [0]                       # batches before the bad one arrive first
  with pytest.raises(ValueError, match="uint8 \\[4, 8, 8, 3\\]"):
    next(pipeline.host_batches(lambda rows: data[rows].astype(np.float32), 10, 4,
                               image_size=SIZE, workers=1))
  with pytest.raises(ValueError, match="one entry per row"):
    next(pipeline.host_batches(lambda rows: (data[rows], [None]), 10, 4, image_size=SIZE,
                               workers=1))
  with pytest.raises(ValueError, match="not a valid range"):
    next(pipeline.host_batches(pipeline.array_reader(data), 3, 4, start=5, image_size=SIZE))


def test_pad_rows():
  data = _images(5)
  padded, valid = pipeline.pad_rows(data, 8)
  assert padded.shape == (8, SIZE, SIZE, 3)
  np.testing.assert_array_equal(padded[:5], data)
  assert not padded[5:].any()
  np.testing.assert_array_equal(valid, [True] * 5 + [False] * 3)
  with pytest.raises(ValueError, match="cannot pad 5 rows"):
    pipeline.pad_rows(data, 4)


def test_image_reader_decodes_in_channel_order_and_names_bad_files(tmp_path):
  data = _images(7, seed=4, size=112)
  paths = []
  for i, image in enumerate(data):
    paths.append(str(tmp_path / f"face {i}.png"))
    Image.fromarray(image).save(paths[-1])
  paths[3] = str(tmp_path / "broken.jpg")
  with open(paths[3], "wb") as f:
    f.write(b"not a jpeg")
  good = [i for i in range(7) if i != 3]

  for order, flip in (("rgb", slice(None)), ("bgr", slice(None, None, -1))):
    batches, rows, images = _collect(pipeline.host_batches(
        pipeline.image_reader(paths, order, skip_errors=True), 7, 4, workers=2))
    np.testing.assert_array_equal(rows, good)
    reference = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")) for i in good])
    np.testing.assert_array_equal(images, reference[..., flip])
    errors = {r: e for b in batches for r, e in b.errors.items()}
    assert list(errors) == [3] and "broken.jpg" in errors[3]

  with pytest.raises(preprocess.ImageError, match="broken.jpg"):
    list(pipeline.host_batches(pipeline.image_reader(paths), 7, 4, workers=2))


def test_eight_devices_see_every_example_once():
  out = run_python("""
    import json
    import numpy as np
    import jax
    from exfiqa_jax import parallel
    from exfiqa_jax.data import pipeline

    assert jax.device_count() == 8
    n, batch = 29, 16
    data = np.random.RandomState(5).randint(0, 256, (n, 8, 8, 3)).astype(np.uint8)
    per_device = {d.id: [] for d in jax.devices()}
    gathered, valid_all = [], []
    for b in pipeline.global_batches(pipeline.array_reader(data), n, batch, image_size=8,
                                     workers=2):
      assert b.images.shape == (batch, 8, 8, 3) and b.valid.shape == (batch,)
      assert b.images.sharding.is_equivalent_to(parallel.batch_sharding(), 4)
      rows = parallel.host_batch_to_global(b.host.rows)
      for shard, row_shard, img_shard in zip(b.valid.addressable_shards, rows.addressable_shards,
                                             b.images.addressable_shards):
        assert shard.data.shape == (2,) and shard.device == row_shard.device == img_shard.device
        r = np.asarray(row_shard.data)[np.asarray(shard.data)]
        np.testing.assert_array_equal(np.asarray(img_shard.data)[np.asarray(shard.data)], data[r])
        per_device[shard.device.id] += r.tolist()
      images, valid = parallel.global_to_host((b.images, b.valid))
      gathered.append(images[valid]); valid_all.append(valid)
    np.testing.assert_array_equal(np.concatenate(gathered), data)
    try:
      next(pipeline.host_batches(pipeline.array_reader(data), n, 12, image_size=8))
      raise AssertionError("a batch of 12 on 8 devices must be refused")
    except ValueError as e:
      assert "multiple of the 8 devices" in str(e)
    print(json.dumps({"per_device": per_device,
                      "valid": np.concatenate(valid_all).tolist()}))
  """, devices=8)
  result = json.loads(out.strip().splitlines()[-1])
  seen = sorted(r for rows in result["per_device"].values() for r in rows)
  assert seen == list(range(29))                        # every example exactly once
  assert all(len(rows) > 0 for rows in result["per_device"].values())
  assert sum(result["valid"]) == 29 and len(result["valid"]) == 32


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_hosts_each_read_their_rows_and_together_see_every_example_once(tmp_path):
  n, batch = 37, 16                                     # 3 global batches, the last 5 real rows
  port = _free_port()
  code = """
    import json, threading
    import numpy as np
    import jax
    pid = {pid}
    jax.distributed.initialize(coordinator_address="localhost:{port}", num_processes=2,
                               process_id=pid, initialization_timeout=120)
    from exfiqa_jax import parallel
    from exfiqa_jax.data import pipeline

    assert jax.process_count() == 2 and jax.device_count() == 8
    assert jax.local_device_count() == 4
    data = np.random.RandomState(6).randint(0, 256, ({n}, 8, 8, 3)).astype(np.uint8)
    read_rows, lock = [], threading.Lock()

    def read(rows):
      with lock:
        read_rows.extend(int(r) for r in rows)
      return data[rows]

    gathered, host_rows = [], []
    for b in pipeline.global_batches(read, {n}, {batch}, image_size=8, workers=2):
      assert b.host.images.shape == ({batch} // 2, 8, 8, 3)
      host_rows.append(b.host.rows.tolist())
      images, valid = parallel.global_to_host((b.images, b.valid))
      gathered.append(images[valid])
    np.testing.assert_array_equal(np.concatenate(gathered), data)
    with open(r"{out}" + f"/host{{pid}}.json", "w") as f:
      json.dump({{"read": read_rows, "slots": host_rows,
                 "slice": pipeline.host_slice({batch})}}, f)
  """
  def launch(pid):
    return run_python(code.format(pid=pid, port=port, n=n, batch=batch, out=tmp_path),
                      devices=4, timeout=300)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    for future in [pool.submit(launch, pid) for pid in (0, 1)]:
      future.result()
  hosts = [json.loads((tmp_path / f"host{pid}.json").read_text()) for pid in (0, 1)]
  assert [h["slice"] for h in hosts] == [[0, 8], [8, 8]]
  for pid, host in enumerate(hosts):                    # each host read only its own rows
    mine = [s + r for s in range(0, n, batch) for r in range(8 * pid, 8 * pid + 8) if s + r < n]
    assert sorted(host["read"]) == mine
    assert [r for slots in host["slots"] for r in slots if r >= 0] == mine
  both = sorted(hosts[0]["read"] + hosts[1]["read"])
  assert both == list(range(n))                         # together: every example exactly once
