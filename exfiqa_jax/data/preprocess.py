"""Image preprocessing shared by every model and data path (docs/methods.md).

Decode to uint8 (PIL) → bilinear resize to 112 when needed → channel order → on device
(x/255 − 0.5)/0.5. `channel_order="rgb"` feeds RGB, what the networks were trained on;
`"bgr"` feeds the file's pixels in B,G,R order — exactly what the
official evaluation scripts feed, right for CR-FIQA-prepared (channel-swapped) folders.
"""
from __future__ import annotations

import io
import os
import re

import jax.numpy as jnp
import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SIZE = 112
CHANNEL_ORDERS = ("rgb", "bgr")
INPUT_SCALES = ("minus1_1", "0_1")   # (x/255 − 0.5)/0.5 | x/255: the FR families' input scales
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


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
  image = open_rgb(source, label)
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
  """Encoded bytes or a file → decoded 8-bit RGB PIL image; anything that cannot be decoded
  (truncated, not an image, a header claiming more pixels than PIL's decompression-bomb limit)
  is an ImageError naming `label`, which the skip options can skip."""
  try:
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    return to_rgb(image, label)
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


def list_images(directory: str | os.PathLike) -> list[str]:
  """Every image file under `directory`, recursive, sorted by relative path."""
  found = []
  for root, _, files in os.walk(directory):
    for f in files:
      if f.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.join(root, f))
  return sorted(found, key=lambda p: os.path.relpath(p, directory))


def read_image_list(images: str, image_root: str | None = None) -> tuple[list[str], list[str]]:
  """A folder (recursive, sorted) or a list file (one path per line, optionally followed by
  numbers such as a CR-FIQA `<path> <score>` line; relative paths resolve against `image_root`
  or the list file's folder) → (paths, names as listed)."""
  if os.path.isdir(images):
    paths = list_images(images)
    return paths, [os.path.relpath(p, images) for p in paths]
  if not os.path.isfile(images):
    raise FileNotFoundError(f"{images} is neither an image folder nor a list file; pass a folder "
                            "of face crops or a text file with one image path per line")
  root = image_root or os.path.dirname(os.path.abspath(images))
  with open(images, encoding="utf-8") as f:
    names = [_path_of_line(line) for line in f if line.strip()]
  return [n if os.path.isabs(n) else os.path.join(root, n) for n in names], names


_TRAILING_NUMBERS = re.compile(r"(\s+[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?)+$")


def _path_of_line(line: str) -> str:
  """The path of a list line: trailing numeric fields dropped, spaces inside the path kept."""
  return _TRAILING_NUMBERS.sub("", line.strip())
