"""The two pixel protocols of an evaluation: `published` and `lossless` (docs/data.md,
"Protocols: published and lossless").

`published` feeds the models the pixels the FIQA papers' scripts fed them. CR-FIQA's data
preparation (extract_IJB.py, extract_bin.py, extract_xqlfw.py, extract_adience.py) ends every
image with `cv2.imwrite(path, array)` of an RGB-ordered array, and the scoring scripts read the
file back with `cv2.imread` and feed it unconverted. OpenCV treats the array as B,G,R, so with A
the image in true RGB, enc/dec a standard (RGB) JPEG codec and swap the channel reversal:

    file on disk       J = enc(swap(A))            (JPEG quality 95, 4:2:0: OpenCV's defaults)
    what the model sees    swap(dec(J))            (cv2.imread returns B,G,R of dec(J))

Here J is written with PIL and read back with PIL plus a channel reversal (the data set's
channel order "bgr"). Both libraries use libjpeg-turbo with the same settings (quality 95,
4:2:0, baseline, integer slow DCT; fancy upsampling on decode); the PIL path gives the same
bytes as `cv2.imencode` and the same pixels as `cv2.imdecode` (tests/test_protocol.py; measured
identical with Pillow 13 / libjpeg-turbo 3.2 against OpenCV 5.0 / libjpeg-turbo 3.1). OpenCV
is not needed at run time.

`lossless` keeps what the release stores: IJB-C crops as PNG, `.bin` and XQLFW images as
their stored bytes (decoded, true RGB).
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from exfiqa_jax.data.benchmark_names import PROTOCOLS

SCRIPT_JPEG_QUALITY = 95      # cv2.IMWRITE_JPEG_QUALITY default
SCRIPT_CHANNEL_ORDER = "bgr"  # how the scripts' files are read back (= cv2.imread)

# Build option per builder and protocol: which bytes the data set stores. Builders missing here
# are read the same way under both protocols (their inputs already are the scripts' files, as
# Adience and quality_data, or they are not FIQA benchmarks, as synthetic_faces).
BUILD_OPTIONS: dict[str, dict[str, dict[str, str]]] = {
    "ijbc": {"published": {"image_format": "jpeg"}, "lossless": {"image_format": "png"}},
    "verification_bin": {"published": {"image_format": "jpeg"},
                         "lossless": {"image_format": "stored"}},
    "xqlfw": {"published": {"image_format": "jpeg"}, "lossless": {"image_format": "stored"}},
}


def check_protocol(protocol: str) -> str:
  if protocol not in PROTOCOLS:
    raise ValueError(f"--config.data.protocol must be one of {PROTOCOLS} (published = the FIQA "
                     f"scripts' pixels, lossless = the stored pixels; docs/data.md), got "
                     f"{protocol!r}")
  return protocol


def build_options(builder: str, protocol: str, image_format: str = "") -> dict[str, str]:
  """The builder options of `protocol` for `builder` (a registered builder name).

  `image_format` (--config.data.image_format) names the stored format explicitly; it must agree
  with the protocol, so that a data set's protocol is never ambiguous.
  """
  check_protocol(protocol)
  options = dict(BUILD_OPTIONS.get(builder, {}).get(protocol, {}))
  if image_format:
    if "image_format" not in options:
      raise ValueError(f"--config.data.image_format={image_format!r}: the {builder} builder has "
                       "no image_format option (it stores its inputs as they are)")
    if image_format != options["image_format"]:
      raise ValueError(f"--config.data.image_format={image_format!r} contradicts "
                       f"--config.data.protocol={protocol!r} for {builder} (which stores "
                       f"image_format={options['image_format']!r}); choose the protocol "
                       f"instead: {_formats(builder)}")
  return options


def _formats(builder: str) -> str:
  return ", ".join(f"{p} → image_format={o['image_format']!r}"
                   for p, o in BUILD_OPTIONS[builder].items())


def script_jpeg(rgb: np.ndarray) -> bytes:
  """The bytes `cv2.imwrite(path, rgb)` writes for an RGB-ordered uint8 [H, W, 3] array: a
  quality-95 4:2:0 JPEG of the channel-reversed array (OpenCV reads the array as B,G,R)."""
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f"script_jpeg needs uint8 [H, W, 3], got {rgb.dtype} {rgb.shape}")
  buffer = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(rgb[..., ::-1])).save(
      buffer, format="JPEG", quality=SCRIPT_JPEG_QUALITY, subsampling="4:2:0")
  return buffer.getvalue()


def read_script_jpeg(data: bytes) -> np.ndarray:
  """What `cv2.imread` returns for a file of bytes `data` (uint8 [H, W, 3], B,G,R of the
  decoded JPEG); for a script-written file that is the image in RGB order again."""
  with Image.open(io.BytesIO(data)) as image:
    return np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])


def published_pixels(rgb: np.ndarray) -> np.ndarray:
  """What the FIQA scripts feed the model for an image A (RGB): swap(dec(enc(swap(A))))."""
  return read_script_jpeg(script_jpeg(rgb))


def script_file(source: bytes | str, name: str) -> bytes:
  """The file CR-FIQA's extract_bin.py / extract_xqlfw.py writes for a stored image (encoded
  bytes or a path): decoded to RGB, then `script_jpeg`. Unreadable input is an ImageError
  naming `name` (skip_corrupt skips it)."""
  from exfiqa_jax.data import preprocess
  if isinstance(source, str) and not os.path.isfile(source):
    raise preprocess.ImageError(f"image {name} is missing: {source} does not exist")
  return script_jpeg(np.asarray(preprocess.open_rgb(source, name)))
