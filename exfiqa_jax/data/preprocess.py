"""Image preprocessing shared by every model and data path (docs/methods.md).

Decode to uint8 (PIL) → bilinear resize to 112 when needed → channel order → on device
(x/255 − 0.5)/0.5. `channel_order="rgb"` feeds RGB, what the networks were trained on;
`"bgr"` feeds the file's pixels in B,G,R order — exactly what the
official evaluation scripts feed, right for CR-FIQA-prepared (channel-swapped) folders.
Every decode turns a picture upright by its EXIF orientation, as cv2.imread and the detection
path do (docs/data.md). Only regular files with an image extension are images: a folder listing
skips everything else with one log line, and a listed special file is an ImageError, never
opened (docs/data.md, "Image folders and lists").
"""
from __future__ import annotations

import collections
import io
import os
import re
import stat
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image, UnidentifiedImageError

from exfiqa_jax import identity

IMAGE_SIZE = 112
CHANNEL_ORDERS = ("rgb", "bgr")
INPUT_SCALES = ("minus1_1", "0_1")   # (x/255 − 0.5)/0.5 | x/255: the FR families' input scales
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
# pictures the toolkit does not read: skipped with a warning that says to convert them
OTHER_PICTURES = (".gif", ".heic", ".heif", ".avif", ".jxl", ".jp2", ".j2k", ".svg", ".ico",
                  ".psd", ".dng", ".raw", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2")
SYSTEM_FOLDERS = ("__MACOSX", "@eaDir", "$RECYCLE.BIN", "System Volume Information")


class ImageError(ValueError):
  """An image that cannot be decoded or has an unusable size."""


def check_channel_order(channel_order: str) -> str:
  if channel_order not in CHANNEL_ORDERS:
    raise ValueError(f"channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
  return channel_order


def decode_image(source: bytes | str | os.PathLike, channel_order: str = "rgb",
                 size: int = IMAGE_SIZE, name: str | None = None) -> np.ndarray:
  """Decodes encoded bytes or a file to uint8 [size, size, 3] in the requested channel order."""
  check_channel_order(channel_order)
  label = name or (os.fspath(source) if not isinstance(source, bytes) else "<bytes>")
  image, stored = _open_upright(source, label)
  if stored != 1:          # a crop stored turned is unusual: say so once per process
    logging.log_first_n(logging.WARNING, "image %s carries EXIF orientation %d: decoded "
                        "upright, as cv2.imread and the detection path do (docs/data.md); "
                        "later such images are turned without a word", 1, label, stored)
  if min(image.size) < 8:
    raise ImageError(f"image {label} is {image.size[0]}x{image.size[1]}: too small for a face "
                     f"crop (expected {size}x{size} aligned faces)")
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  array = np.asarray(image, dtype=np.uint8)
  if channel_order != "rgb":
    array = array[..., ::-1]
  return np.ascontiguousarray(array)


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_rgb(image: Image.Image, label: str = "<image>") -> Image.Image:
  """An opened PIL image → 8-bit RGB. 16-bit greyscale (and 32-bit integer images holding
  16-bit values) is scaled 65535 → 255 — PIL's own convert("RGB") clips it at 255, which turns
  almost every pixel white; floating-point images are refused."""
  if image.mode in _SIXTEEN_BIT or image.mode == "I":
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
      raise ImageError(f"image {label} is a {image.mode} image with values in "
                       f"[{values.min()}, {values.max()}], not 8- or 16-bit; convert it to "
                       "8-bit RGB")
    grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=-1)))
  if image.mode == "F":
    raise ImageError(f"image {label} holds floating-point pixels (mode F); convert it to 8-bit "
                     "RGB")
  return image.convert("RGB")


def open_rgb(source: bytes | str | os.PathLike, label: str) -> Image.Image:
  """Encoded bytes or a regular file → decoded 8-bit RGB PIL image, upright by its EXIF
  orientation; anything that cannot be decoded (truncated, not an image, a named pipe or a
  folder, a header claiming more pixels than PIL's decompression-bomb limit) is an ImageError
  naming `label`, which the skip options can skip."""
  return _open_upright(source, label)[0]


# EXIF orientation → the transpose that makes the picture upright (PIL's ImageOps.exif_transpose)
_UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
            4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
            6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}


def orientation(image: Image.Image) -> int:
  """The EXIF orientation of an opened image (1 = stored upright; also when the EXIF block is
  damaged: the stored orientation is kept)."""
  try:
    value = int(image.getexif().get(0x0112, 1))
  except Exception:  # noqa: BLE001  PIL raises assorted types for damaged EXIF blocks
    return 1
  return value if value in _UPRIGHT else 1


def upright_rgb(image: Image.Image, label: str = "<image>") -> Image.Image:
  """An opened PIL image → 8-bit RGB (to_rgb), turned upright by its EXIF orientation."""
  return _upright(image, label)[0]


def _upright(image: Image.Image, label: str) -> tuple[Image.Image, int]:
  stored = orientation(image)
  rgb = to_rgb(image, label)
  return (rgb.transpose(_UPRIGHT[stored]) if stored != 1 else rgb), stored


def _open_upright(source: bytes | str | os.PathLike, label: str) -> tuple[Image.Image, int]:
  try:
    if isinstance(source, bytes):
      return _upright(Image.open(io.BytesIO(source)), label)
    with identity.open_regular(source) as f:    # stat first: a pipe is refused, not opened
      image = Image.open(f)
      image.load()
      return _upright(image, label)
  except ImageError:
    raise
  except Image.DecompressionBombError as e:
    raise ImageError(f"cannot decode image {label}: its header claims too many pixels for a "
                     f"face crop ({e})") from e
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as e:
    raise ImageError(f"cannot decode image {label}: {e}") from e
  except Exception as e:  # noqa: BLE001  PIL plugins raise assorted types for broken files
    raise ImageError(f"cannot decode image {label}: {type(e).__name__}: {e}") from e


def normalize(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 [..., 3] → float32 in [−1, 1]: (x/255 − 0.5)/0.5. Runs on device."""
  return (images.astype(jnp.float32) / 255.0 - 0.5) / 0.5


def scale_input(images_uint8: jnp.ndarray, input_scale: str) -> jnp.ndarray:
  """uint8 [..., 3] → float32 the way the FR family was trained (INPUT_SCALES). Runs on device."""
  if input_scale == "minus1_1":
    return normalize(images_uint8)
  if input_scale == "0_1":
    return images_uint8.astype(jnp.float32) / 255.0
  raise ValueError(f"input_scale must be one of {INPUT_SCALES}, got {input_scale!r}")


# --------------------------------------------------------------------- folders and lists
class Skipped(NamedTuple):
  """An entry of a folder that is not an image, and why."""
  path: str     # the entry as os.scandir names it (a name that is not UTF-8 holds surrogates)
  reason: str


_QUIET = ("hidden", "a macOS", "a system folder", "not an image", "a link to a folder")


def skip_reason(name: str) -> str | None:
  """Why a folder entry's name alone rules it out (hidden, macOS `._` metadata, a system
  folder, not UTF-8), or None."""
  if name.startswith("._"):
    return "a macOS '._' metadata file"
  if name.startswith("."):
    return "hidden (a name starting with '.')"
  if name in SYSTEM_FOLDERS:
    return "a system folder (macOS archive residue, NAS thumbnails, recycle bin)"
  try:
    name.encode("utf-8")
  except UnicodeEncodeError:
    return "a name that is not UTF-8 (rename it)"
  return None


def _file_reason(entry: os.DirEntry) -> str | None:
  """Why a non-folder entry is not an image, or None when it is a regular image file."""
  extension = os.path.splitext(entry.name)[1].lower()
  if extension not in IMAGE_EXTENSIONS:
    if extension in OTHER_PICTURES:
      return f"{extension} pictures (not read: convert them to JPEG or PNG)"
    return f"not an image ({extension or 'no'} extension)"
  if entry.is_file():                 # follows links; d_type only, no stat for plain files
    return None
  try:
    st = os.stat(entry.path)
  except OSError:
    return "a broken symbolic link" if entry.is_symlink() else "a file that cannot be read"
  return f"{identity.kind_of(st)}, not a regular file" if not stat.S_ISREG(st.st_mode) else None


def scan_images(directory: str | os.PathLike) -> tuple[list[str], list[Skipped]]:
  """(every regular image file under `directory`, recursive, sorted by relative path; every
  entry left out, with the reason). Nothing is opened: a named pipe named like an image is
  a skipped entry, not a hang."""
  directory = os.fspath(directory)
  found, skipped = [], []
  pending = [directory]
  while pending:
    folder = pending.pop()
    try:
      entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
      skipped.append(Skipped(folder, f"a folder that cannot be read ({e.strerror})"))
      continue
    for entry in entries:
      reason = skip_reason(entry.name)
      if reason is None and entry.is_dir():
        if entry.is_symlink():           # as os.walk: links to folders are not followed
          reason = "a link to a folder (not followed)"
        else:
          pending.append(entry.path)
          continue
      reason = reason or _file_reason(entry)
      if reason is None:
        found.append(entry.path)
      else:
        skipped.append(Skipped(entry.path, reason))
  found.sort(key=lambda p: os.path.relpath(p, directory))
  skipped.sort(key=lambda s: os.path.relpath(s.path, directory))
  return found, skipped


def scan_identities(root: str | os.PathLike) -> tuple[list[str], list[str], list[Skipped]]:
  """The top level of an identity-folder tree (one sub-folder per identity): (identity folder
  names, image files lying loose in `root`, entries skipped by name: hidden, macOS metadata,
  system folders, names that are not UTF-8), each sorted."""
  identities, loose, skipped = [], [], []
  for entry in sorted(os.scandir(root), key=lambda e: e.name):
    reason = skip_reason(entry.name)
    if reason is not None:
      skipped.append(Skipped(entry.path, reason))
    elif entry.is_dir():
      identities.append(entry.name)
    elif entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
      loose.append(entry.name)
  return identities, loose, skipped


def printable(path: str) -> str:
  """A path for a log line or an error: bytes that are not UTF-8 shown as \\xNN escapes."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


def log_skipped(directory: str | os.PathLike, skipped: list[Skipped], examples: int = 3) -> None:
  """One log line for everything a listing left out: the count, then each reason with its
  count and the first few paths; a warning when anything but hidden or non-image files (which
  every folder holds) was left out."""
  if not skipped:
    return
  by_reason: dict[str, list[str]] = collections.defaultdict(list)
  for entry in skipped:
    by_reason[entry.reason].append(printable(os.path.relpath(entry.path, directory)))
  parts = [f"{len(paths)} × {reason}: {', '.join(paths[:examples])}"
           + (", ..." if len(paths) > examples else "") for reason, paths in by_reason.items()]
  quiet = all(reason.startswith(_QUIET) for reason in by_reason)
  logging.log(logging.INFO if quiet else logging.WARNING,
              "%s: skipped %d entries that are not images (only regular %s files are): %s",
              printable(os.fspath(directory)), len(skipped), "/".join(IMAGE_EXTENSIONS),
              "; ".join(parts))


def list_images(directory: str | os.PathLike) -> list[str]:
  """Every regular image file under `directory` (scan_images), logging what was left out."""
  found, skipped = scan_images(directory)
  log_skipped(directory, skipped)
  return found


def read_image_list(images: str, image_root: str | None = None) -> tuple[list[str], list[str]]:
  """A folder (recursive, sorted; list_images) or a list file (one path per line, optionally
  followed by numbers such as a CR-FIQA `<path> <score>` line; relative paths resolve against
  `image_root` or the list file's folder) → (paths, names as listed). A list file is read as
  UTF-8 (with or without a byte-order mark), UTF-16 with its mark, or else Windows-1252 with a
  warning; any line ends."""
  if os.path.isdir(images):
    paths = list_images(images)
    return paths, [os.path.relpath(p, images) for p in paths]
  if not os.path.exists(images):
    raise FileNotFoundError(f"{images} is neither an image folder nor a list file; pass a folder "
                            "of face crops or a text file with one image path per line")
  if images.lower().endswith(IMAGE_EXTENSIONS + tuple(OTHER_PICTURES)):
    raise ValueError(f"{images} is an image, not a list file: pass its folder, or a text file "
                     "with one image path per line")
  with identity.open_regular(images) as f:    # a pipe or a device: refused by name
    data = f.read()
  if b"\x00" in data[:4096] and not data.startswith(tuple(mark for mark, _ in _BOMS)):
    raise ValueError(f"{images} holds binary data, not a list of image paths: pass a folder of "
                     "face crops or a text file with one image path per line")
  text = _decode_list(data, images)
  root = image_root or os.path.dirname(os.path.abspath(images))
  names = [_path_of_line(line) for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
  return [n if os.path.isabs(n) else os.path.join(root, n) for n in names], names


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"),
         (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def _decode_list(data: bytes, label: str) -> str:
  """A list file's text: by its byte-order mark, else UTF-8, else (a guess, said) Windows-1252
  or Latin-1, the encodings of lists written on Windows and older systems."""
  for mark, encoding in _BOMS:
    if data.startswith(mark):
      try:
        return data.decode(encoding)
      except UnicodeDecodeError as e:
        raise ValueError(f"{label} starts with a {encoding} byte-order mark but is not "
                         f"{encoding} text ({e}); save it as UTF-8") from None
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    position = e.start
  encoding = "cp1252"
  try:
    text = data.decode(encoding)
  except UnicodeDecodeError:
    encoding, text = "latin-1", data.decode("latin-1")
  logging.warning("%s is not UTF-8 (byte %d): read as %s; if names with accents are not "
                  "found, save the list as UTF-8", label, position, encoding)
  return text


_TRAILING_NUMBERS = re.compile(r"(\s+[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)+$")


def _path_of_line(line: str) -> str:
  """The path of a list line: trailing numeric fields dropped, spaces inside the path kept."""
  return _TRAILING_NUMBERS.sub("", line.strip())
