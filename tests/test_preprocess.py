"""data/preprocess.py: what counts as an image of a folder or a list, and how one is decoded.

Only regular files with an image extension are images; everything else a user's system writes
beside them (named pipes, device links, macOS `._` files, hidden and system folders, names that
are not UTF-8, pictures in formats the toolkit does not read) is skipped with a log line, never
opened. List files are read whatever their byte-order mark, encoding or line ends. EXIF
orientation is honoured in crop mode and in detection alike (docs/data.md).
"""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from absl import logging as absl_logging
from PIL import Image, ImageOps

from exfiqa_jax.data import preprocess
from exfiqa_jax.detection import photos

needs_fifo = pytest.mark.skipif(not (hasattr(os, "mkfifo") and os.path.exists("/dev/zero")),
                                reason="needs named pipes and /dev/zero")


def _png(path, seed=0, size=(12, 12)):
  path.parent.mkdir(parents=True, exist_ok=True)
  pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(path)


@needs_fifo
def test_a_folder_lists_only_regular_image_files_and_says_what_it_skipped(
    tmp_path, special_opens, caplog):
  root = tmp_path / "faces"
  for name in ("a/1.png", "a/2.JPG", "a/dir.jpg/6.png"):
    _png(root / name)
  (root / "b").mkdir()
  os.symlink(root / "a" / "1.png", root / "b" / "3.png")           # a link to a file: an image
  junk = {"a/._1.png": "macOS", ".thumbs/4.png": "hidden", "a/.5.png": "hidden",
          "__MACOSX/a/._1.png": "system", "@eaDir/1.png/SYNOFILE_THUMB_M.jpg": "system",
          "a/x.gif": ".gif", "a/y.heic": ".heic", "a/z.HEIC": ".heic", "a/notes.txt": ".txt"}
  for name in junk:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"\x00\x05\x16\x07 not a picture")
  os.mkfifo(root / "a" / "pipe.jpg")
  os.symlink("/dev/zero", root / "a" / "zero.png")
  os.symlink(root / "nowhere.png", root / "a" / "gone.png")
  raw = os.fsencode(root)
  for bad in (b"/a/bad\xff.png", b"/bad\xfe/7.png"):
    os.makedirs(os.path.dirname(raw + bad), exist_ok=True)
    with open(raw + bad, "wb") as f:
      f.write((root / "a" / "1.png").read_bytes())

  with caplog.at_level(logging.INFO):
    found = preprocess.list_images(root)
  assert [os.path.relpath(p, root) for p in found] == [
      "a/1.png", "a/2.JPG", "a/dir.jpg/6.png", "b/3.png"]
  paths, names = preprocess.read_image_list(str(root))
  assert paths == found and names == ["a/1.png", "a/2.JPG", "a/dir.jpg/6.png", "b/3.png"]

  _, skipped = preprocess.scan_images(root)
  why = {os.path.relpath(s.path, root): s.reason for s in skipped}
  assert "named pipe" in why["a/pipe.jpg"] and "character device" in why["a/zero.png"]
  assert "broken symbolic link" in why["a/gone.png"]
  assert "UTF-8" in why[os.fsdecode(b"a/bad\xff.png")] and "UTF-8" in why[os.fsdecode(b"bad\xfe")]
  assert "macOS" in why["a/._1.png"] and "hidden" in why[".thumbs"] and "hidden" in why["a/.5.png"]
  assert "system" in why["__MACOSX"] and "system" in why["@eaDir"]
  assert ".heic" in why["a/y.heic"] and ".heic" in why["a/z.HEIC"] and ".gif" in why["a/x.gif"]
  assert len(skipped) == 14
  # one log line per listing: the count, each reason with its count and a few paths
  lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
  assert len(lines) == 2, lines
  text = lines[0]
  assert "14 entries" in text and "pipe.jpg" in text and "2 × .heic" in text
  assert "bad\\xff.png" in text                   # shown, not a surrogate that breaks the log
  assert max(r.levelno for r in caplog.records) == logging.WARNING


def test_only_quiet_skips_are_logged_as_info(tmp_path, caplog):
  _png(tmp_path / "a" / "1.png")
  (tmp_path / "a" / ".DS_Store").write_bytes(b"")
  (tmp_path / "a" / "scores.csv").write_text("1\n")
  with caplog.at_level(logging.INFO):
    assert len(preprocess.list_images(tmp_path)) == 1
  skipped = [r for r in caplog.records if "skipped" in r.getMessage()]
  assert len(skipped) == 1 and skipped[0].levelno == logging.INFO
  assert "2 entries" in skipped[0].getMessage()


@pytest.mark.parametrize("encoding,newline", [
    ("utf-8", "\n"), ("utf-8-sig", "\r\n"), ("utf-16", "\r\n"), ("cp1252", "\r\n"),
    ("latin-1", "\r"), ("utf-8", "\r\n")])
def test_list_files_as_users_systems_write_them(tmp_path, encoding, newline, caplog):
  lines = ["a/1.png 0.5", "josé/2.png", "c d/3.png 1 2", ""]
  (tmp_path / "list.txt").write_bytes(newline.join(lines).encode(encoding))
  with caplog.at_level(logging.INFO):
    paths, names = preprocess.read_image_list(str(tmp_path / "list.txt"))
  assert names == ["a/1.png", "josé/2.png", "c d/3.png"]
  assert paths[1] == str(tmp_path / "josé" / "2.png")
  warned = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  if encoding in ("cp1252", "latin-1"):      # a guess: said once, with the file and the fix
    assert len(warned) == 1 and "list.txt" in warned[0] and "UTF-8" in warned[0]
  else:
    assert not warned


def test_a_list_whose_byte_order_mark_lies_is_named(tmp_path):
  (tmp_path / "list.txt").write_bytes(b"\xff\xfea/1.png")     # a UTF-16 mark, odd length
  with pytest.raises(ValueError, match="list.txt starts with a utf-16 byte-order mark"):
    preprocess.read_image_list(str(tmp_path / "list.txt"))


def test_an_image_or_a_binary_file_given_as_the_list_is_named(tmp_path):
  """--config.images=<one .png> was read as a list file ("embedded null byte")."""
  Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "face.png")
  with pytest.raises(ValueError, match="face.png is an image, not a list file"):
    preprocess.read_image_list(str(tmp_path / "face.png"))
  (tmp_path / "faces").write_bytes((tmp_path / "face.png").read_bytes())
  with pytest.raises(ValueError, match="faces holds binary data, not a list of image paths"):
    preprocess.read_image_list(str(tmp_path / "faces"))


@needs_fifo
def test_listed_special_files_are_refused_by_name_never_opened(tmp_path, special_opens):
  os.mkfifo(tmp_path / "pipe.jpg")
  os.symlink("/dev/zero", tmp_path / "zero.png")
  (tmp_path / "dir.jpg").mkdir()
  (tmp_path / "list.txt").write_text("pipe.jpg\nzero.png\ndir.jpg\n")
  paths, names = preprocess.read_image_list(str(tmp_path / "list.txt"))
  assert names == ["pipe.jpg", "zero.png", "dir.jpg"]     # listed by the user: decoding says no
  for path, kind in zip(paths, ("named pipe", "character device", "folder")):
    with pytest.raises(preprocess.ImageError, match=f"{os.path.basename(path)}.*{kind}"):
      preprocess.decode_image(path)
  os.mkfifo(tmp_path / "list_pipe.txt")
  with pytest.raises(OSError, match="list_pipe.txt is a named pipe"):
    preprocess.read_image_list(str(tmp_path / "list_pipe.txt"))


def _tagged_jpeg(path, orientation: int, mode: str = "RGB"):
  """An asymmetric 16x24 photo whose EXIF says it is stored turned (`orientation`)."""
  ys, xs = np.mgrid[0:16, 0:24]
  pixels = np.stack([xs * 10, ys * 15, (xs < 6) * 200], -1).astype(np.uint8)
  image = Image.fromarray(pixels)
  image = image.convert(mode) if mode != "RGB" else image
  exif = Image.Exif()
  exif[0x0112] = orientation
  image.save(path, quality=95, exif=exif)
  reference = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
  assert reference.size == ((16, 24) if orientation in (5, 6, 7, 8) else (24, 16))
  return reference


@pytest.mark.parametrize("orientation,mode", [(6, "RGB"), (8, "L"), (3, "RGB"), (1, "RGB")])
def test_exif_orientation_is_honoured_in_crop_mode_as_in_detection(tmp_path, orientation, mode,
                                                                    monkeypatch):
  path = tmp_path / "phone.jpg"
  upright = _tagged_jpeg(path, orientation, mode)
  warned = []     # absl logs it once per process; here every call is seen
  monkeypatch.setattr(absl_logging, "log_first_n",
                      lambda level, msg, n, *args: warned.append((level, n, msg % args)))
  expected = np.asarray(upright.resize((112, 112), Image.BILINEAR))
  np.testing.assert_array_equal(preprocess.decode_image(str(path)), expected)   # crop mode
  np.testing.assert_array_equal(preprocess.decode_image(path.read_bytes()), expected)
  np.testing.assert_array_equal(photos.read_photo(path), np.asarray(upright))    # detection
  assert len(warned) == (2 if orientation != 1 else 0)
  for level, n, message in warned:
    assert level == absl_logging.WARNING and n == 1 and f"orientation {orientation}" in message
  if warned:
    assert "phone.jpg" in warned[0][2]
