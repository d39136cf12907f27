"""Image preprocessing shared by every model and data path (SPEC-METHOD §1.6).

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
  try:
    if isinstance(source, bytes):
      image = Image.open(io.BytesIO(source))
    else:
      image = Image.open(source)
    image = image.convert("RGB")
  except (UnidentifiedImageError, OSError, ValueError) as e:
    raise ImageError(f"cannot decode image {label}: {e}") from e
  if min(image.size) < 8:
    raise ImageError(f"image {label} is {image.size[0]}x{image.size[1]}: too small for a face "
                     f"crop (expected {size}x{size} aligned faces)")
  if image.size != (size, size):
    image = image.resize((size, size), Image.BILINEAR)
  array = np.asarray(image, dtype=np.uint8)
  if channel_order != "rgb":
    array = array[..., ::-1]
  return np.ascontiguousarray(array)


def normalize(images: jnp.ndarray) -> jnp.ndarray:
  """uint8 [..., 3] → float32 in [−1, 1]: (x/255 − 0.5)/0.5. Runs on device."""
  return (images.astype(jnp.float32) / 255.0 - 0.5) / 0.5


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
