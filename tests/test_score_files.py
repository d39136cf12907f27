"""Other labs' score files: every format read from a hand-written file, names matched to a
benchmark's (and every misfit counted), pickles read without running code."""
from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading

import numpy as np
import pytest

from exfiqa_jax.data import score_files as sf

# OFIQSampleApp's layout: raw measures, then the same as .scalar, and a trailing ';' on the header.
OFIQ = ("Filename;UnifiedQualityScore;BackgroundUniformity;Sharpness;"
        "UnifiedQualityScore.scalar;BackgroundUniformity.scalar;Sharpness.scalar;\n"
        "/data/lfw/img/00001.jpg;0.375;12.5;0.25;37;71;25\n"
        "/data/lfw/img/00002.jpg;0.5;3;0.75;50;12;88\n")


def write(path, data: bytes | str):
  path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
  return str(path)


def test_parse_entry():
  assert sf.parse_entry("ofiq.csv#UnifiedQualityScore.scalar?lower") == sf.ScoreEntry(
      "ofiq.csv", "UnifiedQualityScore.scalar", True)
  assert sf.parse_entry("q.txt") == sf.ScoreEntry("q.txt", "", False)
  assert sf.parse_entry("~/q.txt?lower").path == os.path.expanduser("~/q.txt")
  with pytest.raises(sf.ScoreFileError, match=r"'\?low'.*allowed: \?lower"):
    sf.parse_entry("q.txt?low")
  with pytest.raises(sf.ScoreFileError, match=r"'\?lower#x'"):   # ?lower only at the very end
    sf.parse_entry("q.csv?lower#x")
  with pytest.raises(sf.ScoreFileError, match="names no column"):
    sf.parse_entry("q.csv#")


def test_text_file_with_bom_crlf_spaces_and_directories(tmp_path):
  data = ("\ufeffimgs/Aaron Eckhart/0001.jpg 0.25\r\n\r\n"
          "imgs/b/0002.jpg   -1.5e-3\r\n/abs/c d/3.png\t7\r\n").encode("utf-8")
  path = write(tmp_path / "quality_r50.txt", data)
  file = sf.read_score_file(path)
  assert file.format == "text" and file.column == ""
  assert file.names == ["imgs/Aaron Eckhart/0001.jpg", "imgs/b/0002.jpg", "/abs/c d/3.png"]
  assert file.scores.dtype == np.float64 and file.scores.tolist() == [0.25, -1.5e-3, 7.0]
  assert file.sha256 == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("line, problem", [("lonely.jpg", "'lonely.jpg'"),
                                           ("a.jpg high", "'a.jpg high'"),
                                           ("a.jpg 0.1 0.2", "ends in two numbers")])
def test_text_file_bad_lines_name_path_and_line(tmp_path, line, problem):
  path = write(tmp_path / "q.txt", f"ok.jpg 1\n\n{line}\n")
  with pytest.raises(sf.ScoreFileError) as e:
    sf.read_score_file(path)
  assert f"1 lines are not '<image path> <score>' (first: {path}:3: " in str(e.value)
  assert problem in str(e.value)


def test_latin1_bytes_are_read_with_a_warning(tmp_path, caplog):
  data = "José/1.jpg 0.5\nMüller/2.jpg 0.25\n".encode("latin-1")
  path = write(tmp_path / "q.txt", data)
  with caplog.at_level(logging.WARNING):
    file = sf.read_score_file(path)
  assert file.names == ["José/1.jpg", "Müller/2.jpg"] and file.scores.tolist() == [0.5, 0.25]
  assert f"{path} is not UTF-8: read as Latin-1" in caplog.text
  assert file.sha256 == hashlib.sha256(data).hexdigest()


def test_ofiq_csv_default_column_and_column_choice(tmp_path):
  path = write(tmp_path / "ofiq.csv", OFIQ.replace("\n", "\r\n"))
  file = sf.read_score_file(path)
  assert (file.format, file.column) == ("ofiq", "UnifiedQualityScore.scalar")
  assert file.names == ["/data/lfw/img/00001.jpg", "/data/lfw/img/00002.jpg"]
  assert file.scores.tolist() == [37.0, 50.0]
  assert sf.read_score_file(path, "UnifiedQualityScore").scores.tolist() == [0.375, 0.5]
  assert sf.read_score_file(path, "Sharpness.scalar").scores.tolist() == [25.0, 88.0]
  with pytest.raises(sf.ScoreFileError, match=r"no score column 'Blur'.*'Sharpness.scalar'"):
    sf.read_score_file(path, "Blur")
  raw_only = write(tmp_path / "raw.csv", "Filename;UnifiedQualityScore;Sharpness\na.png;0.5;1\n")
  assert sf.read_score_file(raw_only).column == "UnifiedQualityScore"


def test_ofiq_row_without_a_number_is_named(tmp_path):
  path = write(tmp_path / "ofiq.csv", OFIQ + "/data/lfw/img/broken.jpg;;\n"
               + "/data/lfw/img/00004.jpg;0.1;1;1;x;1;1\n")
  with pytest.raises(sf.ScoreFileError) as e:
    sf.read_score_file(path)
  message = str(e.value)
  assert "2 rows have no number in column 'UnifiedQualityScore.scalar'" in message
  assert "line 4 has 3 cells, the header 7" in message
  assert "line 5 ('/data/lfw/img/00004.jpg'): 'x'" in message


def test_plain_csv_name_and_score_columns(tmp_path):
  comma = write(tmp_path / "s.csv", 'Image,quality\n"x/a, b.jpg",0.5\nx/c.jpg,-2\n')
  file = sf.read_score_file(comma)
  assert (file.format, file.column) == ("csv", "quality")
  assert file.names == ["x/a, b.jpg", "x/c.jpg"] and file.scores.tolist() == [0.5, -2.0]
  tab = write(tmp_path / "s.tsv", "id\tfile\tscore\ttime_ms\n7\tq/1.png\t0.75\t12\n")
  with pytest.raises(sf.ScoreFileError, match=r"'id', 'file', 'score', 'time_ms'.*#<column>"):
    sf.read_score_file(tab)
  file = sf.read_score_file(tab, "score")
  assert (file.names, file.scores.tolist(), file.column) == (["q/1.png"], [0.75], "score")


def test_comma_file_without_a_header_is_a_text_error(tmp_path):
  path = write(tmp_path / "s.csv", "a.jpg,0.5\n")
  with pytest.raises(sf.ScoreFileError, match=r"'a.jpg,0.5'.*needs a header row"):
    sf.read_score_file(path)


def test_npy_in_benchmark_order(tmp_path):
  np.save(tmp_path / "q.npy", np.array([[0.5], [0.25], [1.0]], np.float32))
  file = sf.read_score_file(str(tmp_path / "q.npy"))
  assert (file.format, file.names, file.scores.tolist()) == ("npy", None, [0.5, 0.25, 1.0])
  assert file.sha256 == hashlib.sha256((tmp_path / "q.npy").read_bytes()).hexdigest()
  entry = sf.ScoreEntry(file.path)
  assert sf.image_quality(entry, file, ["a", "b", "c"], "w").tolist() == [0.5, 0.25, 1.0]
  with pytest.raises(sf.ScoreFileError, match="holds 3 scores, the benchmark has 2 images"):
    sf.image_quality(entry, file, ["a", "b"], "w")
  np.save(tmp_path / "wide.npy", np.zeros((3, 2)))
  with pytest.raises(sf.ScoreFileError, match=r"float64 \[3, 2\]"):
    sf.read_score_file(str(tmp_path / "wide.npy"))
  with pytest.raises(sf.ScoreFileError, match="'#x' picks a CSV column"):
    sf.read_score_file(file.path, "x")


class _RunsCode:
  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_unrun(tmp_path):
  marker = tmp_path / "ran"
  path = write(tmp_path / "quality-scores.pkl", pickle.dumps({"a.jpg": _RunsCode(marker)}))
  with pytest.raises(sf.ScoreFileError, match=r"refusing to load: the pickle would call "
                                              rf"{os.system.__module__}\.system"):
    sf.read_score_file(path)
  assert not marker.exists()
  assert pickle.loads(pickle.dumps(_RunsCode(marker))) == 0 and marker.exists()  # it would have


@pytest.mark.parametrize("protocol, numpy_module", [(4, None), (2, b"numpy.core.multiarray")])
def test_ediffiqa_pickle_of_numpy_scalars(tmp_path, protocol, numpy_module):
  scores = {"/d/lfw/a.jpg": np.float32(0.5), "/d/lfw/b.jpg": 0.25, "/d/lfw/c.jpg": np.array(2.0),
            "/d/lfw/d.jpg": np.array([3], np.int64), "/d/lfw/e.jpg": np.float64(-1)}
  data = pickle.dumps(scores, protocol=protocol)
  if numpy_module:                                 # as numpy 1 spells its scalar's module
    data = data.replace(b"numpy._core.multiarray", numpy_module)
    assert numpy_module in data
  file = sf.read_score_file(write(tmp_path / "q.pkl", data))
  assert (file.format, file.names) == ("pickle", list(scores))
  assert file.scores.tolist() == [0.5, 0.25, 2.0, 3.0, -1.0]


def test_pickle_of_anything_but_names_and_numbers_is_refused(tmp_path):
  with pytest.raises(sf.ScoreFileError, match="holds a list"):
    sf.read_score_file(write(tmp_path / "l.pkl", pickle.dumps([1.0])))
  with pytest.raises(sf.ScoreFileError, match=r"2 entries are not.*'b.jpg': str 'high'"):
    sf.read_score_file(write(tmp_path / "d.pkl", pickle.dumps(
        {"a.jpg": True, "b.jpg": "high", "c.jpg": 1.0})))


def test_fifo_and_folder_are_refused_without_opening(tmp_path, special_opens):
  fifo = str(tmp_path / "q.txt")
  os.mkfifo(fifo)
  errors = []
  reader = threading.Thread(target=lambda: errors.append(_error(fifo)), daemon=True)
  reader.start()
  reader.join(5)
  assert not reader.is_alive() and "not a regular file" in errors[0]
  assert "is a folder" in _error(str(tmp_path))


def _error(path: str) -> str:
  try:
    sf.read_score_file(path)
  except sf.ScoreFileError as e:
    return str(e)
  return "read"


def test_match_names_paths_basenames_and_padding(caplog):
  images = ["img/00012", "img/13.png", "Aaron/Aaron_0001.jpg", "x/1.jpg"]
  entries = ["C:\\data\\Aaron\\Aaron_0001.JPG",    # Windows path, extension in another case
             "13.jpg",                            # a basename: the only image called 13
             "/data/lfw/img/12.jpg",              # an absolute path, no zero padding
             "./x/1.png", "y/1.png",              # y/1 is no image: x/1 takes the longer match
             "other/set/99.jpg"]                  # a file may cover more than the benchmark
  with caplog.at_level(logging.INFO):
    rows = sf.match_names(entries, images, "w")
  assert rows.dtype == np.int64 and rows.tolist() == [2, 1, 0, 3]
  assert "w: 2 of the file's 6 entries score no image of the benchmark" in caplog.text


def test_match_names_counts_every_misfit():
  images = ["a/1.jpg", "b/1.jpg", "c/2.jpg", "c/3.jpg", "c/4.jpg", "d/5.jpg"]
  entries = ["1.jpg",                             # ambiguous: a/1 or b/1
             "c/2.jpg", "c/2.png",                # duplicated: both name c/2
             "d/5.jpg", "d/5.jpg"]                # duplicated: the same name twice
  with pytest.raises(sf.ScoreFileError) as e:
    sf.match_names(entries, images, "--config.quality_model.path=x=scores:q.txt on lfw")
  message = str(e.value)
  assert message.startswith("--config.quality_model.path=x=scores:q.txt on lfw: ")
  assert "missing (2 of the 6 images have no entry): 'c/3.jpg', 'c/4.jpg'" in message
  assert ("duplicated (2 images have several entries): 'c/2.jpg' ← 'c/2.jpg' and 'c/2.png', "
          "'d/5.jpg' ← 'd/5.jpg' and 'd/5.jpg'") in message
  assert "ambiguous (1 entries name several images" in message
  assert "'1.jpg' → 'a/1.jpg', 'b/1.jpg'" in message


def test_match_names_whole_name_breaks_a_tie():
  images = ["img/12.jpg", "a/img/12.jpg"]
  assert sf.match_names(["a/img/12.png", "img/12.png"], images, "w").tolist() == [1, 0]


def test_image_quality_lower_negates_and_non_finite_is_refused(tmp_path):
  path = write(tmp_path / "q.txt", "a.jpg 0.5\nb.jpg -2\nc.jpg 3.25\n")
  file = sf.read_score_file(path)
  higher = sf.image_quality(sf.parse_entry(path), file, ["c", "a", "b"], "w")
  lower = sf.image_quality(sf.parse_entry(path + "?lower"), file, ["c", "a", "b"], "w")
  assert higher.dtype == np.float32 and higher.tolist() == [3.25, 0.5, -2.0]
  assert lower.tolist() == (-higher).tolist() and file.scores.tolist() == [0.5, -2.0, 3.25]
  bad = sf.read_score_file(write(tmp_path / "bad.txt", "a.jpg nan\nb.jpg -inf\nc.jpg 1\n"
                                 "d.jpg 1e300\nunused.jpg nan\n"))
  with pytest.raises(sf.ScoreFileError) as e:
    sf.image_quality(sf.ScoreEntry(bad.path), bad, ["a", "b", "c", "d"], "w")
  assert str(e.value).startswith("w: 3 benchmark images have a score that is NaN, infinite")
  assert "'a': nan, 'b': -inf, 'd': 1e+300" in str(e.value)


def test_identity_is_the_content(tmp_path):
  path = write(tmp_path / "q.txt", "a.jpg 0.5\n")
  entry = sf.parse_entry(path + "?lower")
  first = sf.identity(entry, sf.read_score_file(path))
  assert first == {"sha256": hashlib.sha256(b"a.jpg 0.5\n").hexdigest(), "format": "text",
                   "column": "", "lower_is_better": True}
  write(tmp_path / "q.txt", "a.jpg 0.25\n")
  assert sf.identity(entry, sf.read_score_file(path))["sha256"] != first["sha256"]
