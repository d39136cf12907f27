"""Per-group EDC (docs/evaluation.md, "Per-group EDC"): the membership rule (both images /
both templates in the group), one group's EDC = the EDC of that subset computed directly with
exfiqa_jax.metrics.edc, the gap, the CSV labels end to end on the miniature benchmark, and
Adience's age and gender from its fold files."""
from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from configs import eval_verification
from exfiqa_jax.data import builders, protocols
from exfiqa_jax.evaluation import benchmarks, groups
from exfiqa_jax.metrics import edc
from exfiqa_jax.report import groups as groups_report
from exfiqa_jax.report import tables
from exfiqa_jax.tasks import eval as evaluate
from exfiqa_jax.testing import worlds


def _bench(pairs, pair_kind="image"):
  return benchmarks.Benchmark("b", int(np.max(pairs)) + 1, lambda r: None, pair_kind,
                              np.zeros(len(pairs), bool), {}, pairs=np.asarray(pairs))


def test_membership_rule_images_and_templates():
  labels = np.array(["a", "a", "b", "b", "", "a"])
  member, names = groups.pair_groups(_bench([[0, 1], [2, 3], [0, 2], [4, 5], [1, 5], [3, 2]]),
                                     labels, {})
  assert names == ["a", "b"]
  np.testing.assert_array_equal(member, [0, 1, -1, -1, 0, 1])   # cross / unlabelled: -1
  # IJB-C: template 0 = images 0,1 (a,a); 1 = images 2,3 (b,b); 2 = images 4,5 ("",a): mixed
  cmp = {"template_index": np.array([0, 0, 1, 1, 2, 2]), "num_templates": np.asarray(3),
         "pair_rows": np.array([[0, 0], [0, 1], [1, 1], [0, 2], [2, 2]])}
  bench = benchmarks.Benchmark("t", 6, lambda r: None, "template", np.zeros(5, bool), {})
  member, names = groups.pair_groups(bench, labels, cmp)
  assert names == ["a", "b"]
  np.testing.assert_array_equal(member, [0, -1, 1, -1, -1])


@pytest.mark.parametrize("mode", ["fiqa", "iso"])
def test_group_edc_is_the_edc_of_the_subset(mode):
  rng = np.random.default_rng(4)
  n = 600
  gen = rng.random(n) < 0.4
  scores = np.where(gen, rng.normal(0.6, 0.2, n), rng.normal(0.1, 0.2, n)).astype(np.float32)
  pq = rng.random((3, n)).astype(np.float32)
  member = rng.integers(-1, 3, n)           # three groups and pairs outside them
  fmrs = (1e-1, 1e-2)
  out = groups.group_curves(scores, gen, pq, member, 3, fmrs, mode, 0.3)
  for g in range(3):
    rows = member == g
    ref = edc.edc_curves(scores[rows], gen[rows], pq[:, rows], fmrs, edc.FIQA_DISCARD, mode,
                         pauc_limit=0.3)
    np.testing.assert_array_equal(out["fnmr"][g], ref.fnmr)       # exact: the same engine
    np.testing.assert_array_equal(out["pauc"][g], ref.pauc)
    np.testing.assert_array_equal(out["n_genuine"][g], ref.n_genuine)
    assert out["n_pairs"][g] == rows.sum() and out["n_genuine_pairs"][g] == gen[rows].sum()
  gap = groups.gap(out["pauc"])
  np.testing.assert_allclose(gap, out["pauc"].max(0) - out["pauc"].min(0), rtol=0, atol=0)
  # a group without impostors has no EDC; the gap then spans the others
  only_gen = np.where(gen & (member == 0), 0, np.where(member == 0, -1, member))
  out = groups.group_curves(scores, gen, pq, only_gen, 3, fmrs, mode, 0.3)
  assert np.isnan(out["pauc"][0]).all() and np.isfinite(out["pauc"][1:]).all()
  np.testing.assert_allclose(groups.gap(out["pauc"]), np.abs(out["pauc"][1] - out["pauc"][2]),
                             rtol=0, atol=1e-15)


def test_csv_reading_and_name_matching(tmp_path):
  path = tmp_path / "g.csv"
  path.write_text("image,skin,age\n00000.jpg,dark,young\n00001,light,\n")
  table = groups.read_groups_csv(str(path))
  assert set(table) == {"skin", "age"}
  np.testing.assert_array_equal(groups.match_labels(table["skin"], ["00000", "00001", "9"]),
                                ["dark", "light", ""])
  np.testing.assert_array_equal(groups.match_labels(table["age"], ["00000", "00001"]),
                                ["young", ""])
  path.write_text("a.png,x\nb.png,y\n")             # no header: one grouping "group"
  assert groups.read_groups_csv(str(path)) == {"group": {"a.png": "x", "b.png": "y"}}
  path.write_text("a.png,x\na.png,y\n")
  with pytest.raises(ValueError, match="two group labels"):
    groups.read_groups_csv(str(path))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  return worlds.build_world(tmp_path_factory.mktemp("groups"))


def test_csv_groups_end_to_end(world, tmp_path):
  """mini.bin (20 pairs, images 2i, 2i+1): pairs i % 4 in {0, 1} are group A, {2, 3} group B
  (each with genuine and impostor pairs); pair 19's images are split (excluded), image 0 has no
  label (pair 0 excluded)."""
  label = {}
  for i in range(20):
    label[2 * i] = label[2 * i + 1] = "A" if i % 4 < 2 else "B"
  label[39] = "A"
  del label[0]
  csv = tmp_path / "groups.csv"
  csv.write_text("image,group\n" + "".join(f"{k:05d}.jpg,{v}\n" for k, v in label.items()))
  output = tmp_path / "out"
  config = worlds.bin_config(eval_verification.get_config("benchmarks=mini,size=tiny"), world,
                             output, **{"eval.groups": str(csv), "eval.bootstrap": 0,
                                        "report.attention_examples": 0})
  result = evaluate.run(config)
  assert {"groups/mini/fr/fiqa/group", "groups/mini/fr/iso/group"} <= set(result["computed"])
  rows = tables.read_csv(output / "pauc_groups.csv")
  assert {r["group"] for r in rows} == {"A", "B", groups_report.GAP}
  for suffix in ("png", "pdf"):
    assert (output / "plots" / f"edc_groups_mini_fr_fiqa_group.{suffix}").stat().st_size > 0
  summary = json.loads((output / "summary.json").read_text())
  assert summary["protocol"] == "published" and summary["protocols"] == {"mini": "published"}
  assert summary["groups"][0]["groups"]["A"]["n_pairs"] == 9
  assert "## Per-group EDC" in (output / "summary.md").read_text()
  # Independent recomputation: the stored comparison scores and image qualities, the subset of
  # each group's pairs, the EDC engine.
  source, info = builders.load("verification_bin/mini", None, world["data_dir"],
                               **protocols.build_options("verification_bin", "published"))
  a, b, gen = info.pairs["index_a"], info.pairs["index_b"], info.pairs["is_genuine"]
  scores = np.load(output / "cache" / "compare" / "mini" / "fr.npz")["scores"]
  table = tables.read_csv(output / "mini" / "scores_q_token.csv")
  q = np.array([float(r["exit_2"]) for r in table], np.float32)    # %.9g: float32 exact
  pq = np.minimum(q[a], q[b])
  for group, pairs in (("A", [i for i in range(1, 19) if i % 4 < 2]),
                       ("B", [i for i in range(20) if i % 4 >= 2 and i != 19])):
    for mode, limit in (("fiqa", 0.3), ("iso", 0.2)):
      ref = edc.edc_curves(scores[pairs], gen[pairs], pq[None, pairs], (1e-2, 1e-3, 1e-4),
                           edc.FIQA_DISCARD, mode, pauc_limit=limit)
      got = [float(r["pauc"]) for r in rows if r["group"] == group and r["mode"] == mode
             and r["quality"] == "exit_2"]
      np.testing.assert_array_equal(got, ref.pauc[0])            # exact (repr floats)
  edc_rows = tables.read_csv(output / "edc_groups.csv")
  gap = [r for r in edc_rows if r["group"] == groups_report.GAP and r["quality"] == "exit_2"
         and r["mode"] == "fiqa" and r["fmr"] == "0.001"]
  per = {g: [float(r["fnmr"]) for r in edc_rows if r["group"] == g and r["quality"] == "exit_2"
             and r["mode"] == "fiqa" and r["fmr"] == "0.001"] for g in ("A", "B")}
  np.testing.assert_allclose([float(r["fnmr"]) for r in gap],
                             np.abs(np.subtract(per["A"], per["B"])), atol=1e-15)


def _adience(root: pathlib.Path, rng) -> dict[str, tuple[str, str]]:
  """p_<face>_img_<k>.jpg written as extract_adience.py writes them (channel-swapped JPEGs),
  and a fold file with the faces' rows (face 12 has a tied age, face 3 an unknown gender)."""
  root.mkdir()
  for k, face in enumerate([7, 7, 12, 12, 3, 3]):
    rgb = rng.integers(0, 256, (112, 112, 3), np.uint8)
    (root / f"p_{face}_img_{k}.jpg").write_bytes(protocols.script_jpeg(rgb))
  rows = ["user_id\toriginal_image\tface_id\tage\tgender\tx\ty\tdx\tdy\ttilt_ang\t"
          "fiducial_yaw_angle\tfiducial_score",
          "u1\ta.jpg\t7\t(25, 32)\tf\t0\t0\t1\t1\t0\t0\t1",
          "u1\tb.jpg\t7\t(27, 32)\tf\t0\t0\t1\t1\t0\t0\t1",
          "u2\tc.jpg\t12\t(0, 2)\tm\t0\t0\t1\t1\t0\t0\t1",
          "u2\td.jpg\t12\t35\tm\t0\t0\t1\t1\t0\t0\t1",
          "u2\te.jpg\t12\t(4, 6)\tm\t0\t0\t1\t1\t0\t0\t1",
          "u3\tf.jpg\t3\t16\tu\t0\t0\t1\t1\t0\t0\t1",
          "u3\tg.jpg\t3\t22\t\t0\t0\t1\t1\t0\t0\t1"]      # 22: in no group
  (root / "fold_0_data.txt").write_text("\n".join(rows) + "\n")
  return {"7": ("(25, 32)", "female"), "12": ("", "male"), "3": ("(15, 20)", "")}


def test_adience_age_gender_and_pixels(tmp_path):
  expected = _adience(tmp_path / "adience", np.random.default_rng(2))
  config = eval_verification.get_config("benchmarks=adience,size=tiny")
  config.data.manual_dir = str(tmp_path / "adience")
  config.data.data_dir = str(tmp_path / "tfds")
  bench = benchmarks.open_benchmark("adience", config)
  images, names = bench.read(np.arange(bench.num_images))
  labels = groups.image_labels(bench, names)
  assert set(labels) == {"age", "gender"}
  for k, name in enumerate(names):
    face = name.split("_")[1]
    assert (labels["age"][k], labels["gender"][k]) == expected[face], name
    # the crops are the script's channel-swapped files: read as cv2.imread reads them
    data = (tmp_path / "adience" / f"{name}.jpg").read_bytes()
    np.testing.assert_array_equal(images[k], protocols.read_script_jpeg(data))
  assert bench.identity["channel_order"] == "bgr"
