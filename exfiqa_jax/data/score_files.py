"""Other labs' quality-score files, read and matched to a benchmark's image names
(docs/evaluation.md, "Compare with other methods").

A score file is read once: its bytes are hashed as they are parsed (the digest is the stage
identity, so a changed file recomputes). Formats:

  text    `<image path> <score>` per line: CR-FIQA, GraFIQs, ViT-FIQA/EX-FIQA getQualityScore.py.
          The score is the last whitespace token; the path is the rest (spaces kept).
  ofiq    OFIQSampleApp's CSV: `;`-separated, a header `Filename;UnifiedQualityScore;<measure>;…;
          UnifiedQualityScore.scalar;<measure>.scalar;…;` (trailing `;`). Default column:
          UnifiedQualityScore.scalar, else UnifiedQualityScore.
  csv     a header row, `,`- or tab-separated (any `;`-separated table too): names in the first
          column called filename/file/image/path/name/sample (any case), else the first column.
  npy     one float per benchmark image, in the benchmark's order ([I] or [I, 1]).
  pickle  eDifFIQA's `{image path: score}` dict, unpickled without running any code.
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import os
import pickle
import re
from typing import Any, Sequence

from absl import logging
import numpy as np

from exfiqa_jax import identity as identity_lib
from exfiqa_jax.data import preprocess

FORMATS = ("text", "ofiq", "csv", "npy", "pickle")
OPTIONS = ("lower",)
OFIQ_COLUMNS = ("UnifiedQualityScore.scalar", "UnifiedQualityScore")
NAME_COLUMNS = ("filename", "file", "image", "path", "name", "sample")
SYNTAX = "name=scores:<file>[#<column>][?lower] in --config.quality_model.path"
_SHOWN = 5                                        # examples an error shows of each kind
_LINE = re.compile(r"(.*\S)\s+(\S+)")             # `<path with spaces> <last token>`
_EXTENSIONS = frozenset(preprocess.IMAGE_EXTENSIONS)


class ScoreFileError(ValueError):
  """A score file that cannot be read or does not fit the benchmark; the message names it."""


@dataclasses.dataclass(frozen=True)
class ScoreEntry:
  """What the user wrote after `scores:`."""
  path: str                     # ~ expanded
  column: str = ""              # `#column`: the CSV column to read ("" = the format's default)
  lower_is_better: bool = False  # `?lower`: lower file values mean better quality


@dataclasses.dataclass
class ScoreFile:
  """A score file as read: `scores [N]` are exactly the file's values (never negated)."""
  path: str
  format: str                   # one of FORMATS
  names: list[str] | None       # None for .npy (its rows are the benchmark's image order)
  scores: np.ndarray            # float64 [N]
  column: str                   # the column read ("" where the format has one value per name)
  sha256: str                   # digest of exactly the bytes parsed


def parse_entry(text: str) -> ScoreEntry:
  """`"ofiq.csv#UnifiedQualityScore.scalar?lower"` → ScoreEntry("ofiq.csv",
  "UnifiedQualityScore.scalar", True). `?lower` comes last, after any `#column`."""
  rest, lower = text.strip(), False
  if "?" in rest:
    rest, _, option = rest.rpartition("?")
    if option not in OPTIONS:
      raise ScoreFileError(
          f"scores:{text}: unknown option '?{option}'; allowed: "
          f"{', '.join('?' + o for o in OPTIONS)} (lower file values mean better quality), "
          f"written last: {SYNTAX}")
    lower = True
  path, column = rest, ""
  if "#" in rest:
    path, _, column = rest.rpartition("#")
    if not column.strip():
      raise ScoreFileError(f"scores:{text}: '#' names no column; write {SYNTAX}")
  if not path.strip():
    raise ScoreFileError(f"scores:{text}: no file named; write {SYNTAX}")
  return ScoreEntry(os.path.expanduser(path.strip()), column.strip(), lower)


def identity(entry: ScoreEntry, file: ScoreFile) -> dict[str, Any]:
  """What a cached stage records of a score column: the content, not the path (a moved file
  keeps its stages, a changed one recomputes them)."""
  return {"sha256": file.sha256, "format": file.format, "column": file.column,
          "lower_is_better": bool(entry.lower_is_better)}


# ── reading ─────────────────────────────────────────────────────────────────────────────────


def _read_bytes(path: str) -> bytes:
  """The bytes of a regular file, read once (identity_lib.open_regular: a FIFO, device or folder is
  refused before it is opened, as opening a FIFO blocks until a writer comes)."""
  try:
    with identity_lib.open_regular(path) as f:
      return f.read()
  except identity_lib.SpecialFileError as e:
    raise ScoreFileError(f"{e}; a score file is a regular file ({SYNTAX})") from e
  except OSError as e:
    raise ScoreFileError(f"{path}: cannot read the score file ({e.strerror or e}); fix the path "
                         f"in {SYNTAX}") from e


def read_score_file(path: str, column: str = "") -> ScoreFile:
  """Reads, hashes and parses `path` (format by extension, else by content; module docstring).
  `column` picks a CSV column; the other formats hold one score per name."""
  path = os.path.expanduser(path)
  data = _read_bytes(path)
  digest = hashlib.sha256(data).hexdigest()
  fmt = _binary_format(path, data)
  if fmt is not None:
    if column:
      raise ScoreFileError(f"{path}: '#{column}' picks a CSV column, but this is a {fmt} file "
                           f"with one score per image; drop '#{column}' from {SYNTAX}")
    if fmt == "npy":
      return ScoreFile(path, fmt, None, _read_npy(path, data), "", digest)
    names, scores = _read_pickle(path, data)
    return ScoreFile(path, fmt, names, scores, "", digest)
  lines = _text_lines(path, data)
  delimiter = _table_delimiter(lines)
  if delimiter is None:
    if column:
      raise ScoreFileError(f"{path}: '#{column}' picks a CSV column, but this is a "
                           f"'<path> <score>' text file; drop '#{column}' from {SYNTAX}")
    names, scores = _read_text(path, lines)
    return ScoreFile(path, "text", names, scores, "", digest)
  fmt, names, scores, column = _read_table(path, lines, delimiter, column)
  return ScoreFile(path, fmt, names, scores, column, digest)


def _binary_format(path: str, data: bytes) -> str | None:
  """"npy" | "pickle" by extension (or by their magic bytes under another name); None: text."""
  ext = os.path.splitext(path)[1].lower()
  if ext == ".npy" or data.startswith(b"\x93NUMPY"):
    return "npy"
  if ext in (".pkl", ".pickle") or data[:1] == b"\x80":   # protocol 2+ opens with PROTO 0x80
    return "pickle"
  return None


def _text_lines(path: str, data: bytes) -> list[str]:
  """UTF-8 with or without a BOM (UTF-16 with a BOM, as PowerShell redirects write), else
  Latin-1 with a warning; LF or CRLF ends. Split on those only: str.splitlines would also split
  inside names at Latin-1's \\x85 or a form feed."""
  if data.startswith((b"\xff\xfe", b"\xfe\xff")):
    text = data.decode("utf-16")
  else:
    try:
      text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
      logging.warning("%s is not UTF-8: read as Latin-1 (names with accents may not match the "
                      "benchmark's; save the file as UTF-8)", path)
      text = data.decode("latin-1")
  return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _number(text: str) -> float | None:
  try:
    return float(text.strip())
  except ValueError:
    return None


def _table_delimiter(lines: list[str]) -> str | None:
  """`;` (OFIQ) when the first non-blank line has one; tab or `,` when it has one and is a
  header (it ends in no number, split either way); None: `<path> <score>` text."""
  first = next((line for line in lines if line.strip()), "")
  if ";" in first:
    return ";"
  delimiter = "\t" if "\t" in first else "," if "," in first else None
  if delimiter is None:
    return None
  ends = (first.split()[-1], first.rstrip().rstrip(delimiter).split(delimiter)[-1])
  return delimiter if all(_number(end) is None for end in ends) else None


def _bad(path: str, kind: str, problems: list[str], hint: str) -> ScoreFileError:
  shown = "; ".join(problems[:_SHOWN])
  return ScoreFileError(f"{path}: {len(problems)} {kind} (first: {shown}). {hint}")


def _read_text(path: str, lines: list[str]) -> tuple[list[str], np.ndarray]:
  """`<image path> <score>` lines (blank lines ignored) → (names, scores [N])."""
  names, scores, problems = [], [], []
  for number, line in enumerate(lines, 1):
    text = line.strip()
    if not text:
      continue
    match = _LINE.fullmatch(text)
    value = _number(match.group(2)) if match else None
    before = match.group(1).rsplit(None, 1) if match else []
    if value is None:
      problems.append(f"{path}:{number}: {text!r}")
    elif len(before) == 2 and _number(before[1]) is not None:
      problems.append(f"{path}:{number}: {text!r} ends in two numbers")
    else:
      names.append(match.group(1))
      scores.append(value)
  if problems:
    raise _bad(path, "lines are not '<image path> <score>'", problems,
               "A line is an image path and one number; a file with several score columns needs "
               f"a header row (CSV) and the column named as {SYNTAX}")
  if not names:
    raise ScoreFileError(f"{path}: holds no scores (expected '<image path> <score>' lines)")
  return names, np.asarray(scores, dtype=np.float64)


def _columns(path: str, header: list[str], column: str) -> tuple[int, int, str]:
  """(name column, score column, format) of a table's header."""
  lower = [h.lower() for h in header]
  name_at = next((k for k, h in enumerate(lower) if h in NAME_COLUMNS), 0)
  fmt = "ofiq" if any(c in header for c in OFIQ_COLUMNS) else "csv"
  if not column and fmt == "ofiq":
    column = next(c for c in OFIQ_COLUMNS if c in header)
  if not column:
    others = [h for k, h in enumerate(header) if k != name_at]
    if len(others) != 1:
      raise ScoreFileError(
          f"{path}: which column holds the scores? Its columns: {header}; name one as "
          f"scores:{path}#<column> ({SYNTAX})")
    column = others[0]
  if column not in header or header.index(column) == name_at:
    raise ScoreFileError(f"{path}: no score column {column!r} (the names are in "
                         f"{header[name_at]!r}; columns: {header}); fix '#<column>' in {SYNTAX}")
  return name_at, header.index(column), fmt


def _cells(line: str, delimiter: str, width: int) -> list[str]:
  """One row's cells (quoted cells through the csv module); empty cells beyond `width` (a
  trailing delimiter) dropped."""
  cells = next(csv.reader([line], delimiter=delimiter)) if '"' in line else line.split(delimiter)
  while len(cells) > width and not cells[-1].strip():
    cells.pop()
  return cells


def _read_table(path: str, lines: list[str], delimiter: str, column: str
                ) -> tuple[str, list[str], np.ndarray, str]:
  """A CSV with a header row → (format, names, scores [N], the column read)."""
  numbered = ((n, line) for n, line in enumerate(lines, 1) if line.strip())
  try:
    header = [h.strip() for h in _cells(next(numbered)[1], delimiter, 0)]
    while header and not header[-1]:               # OFIQ ends its header with ';'
      header.pop()
    name_at, score_at, fmt = _columns(path, header, column)
    names, scores, problems = [], [], []
    for number, line in numbered:
      row = _cells(line, delimiter, len(header))
      value = _number(row[score_at]) if len(row) == len(header) else None
      if len(row) != len(header):
        problems.append(f"line {number} has {len(row)} cells, the header {len(header)}")
      elif value is None:
        problems.append(f"line {number} ({row[name_at].strip()!r}): {row[score_at]!r}")
      else:
        names.append(row[name_at].strip())
        scores.append(value)
  except csv.Error as e:
    raise ScoreFileError(f"{path}: not a readable CSV ({e})") from e
  if problems:
    raise _bad(path, f"rows have no number in column {header[score_at]!r}", problems,
               "Every row needs one (OFIQ writes ';;' for an image it could not read: drop "
               "those rows or score them)")
  if not names:
    raise ScoreFileError(f"{path}: a header and no rows; the file holds no scores")
  scores = np.asarray(scores, dtype=np.float64)
  failed = int(np.sum(scores == -1)) if header[score_at].endswith(".scalar") else 0
  if fmt == "ofiq" and failed:
    logging.info("%s: %d rows hold OFIQ's failure value -1 in %s; they rank as the lowest "
                 "quality", path, failed, header[score_at])
  return fmt, names, scores, header[score_at]


def _read_npy(path: str, data: bytes) -> np.ndarray:
  """[I] or [I, 1] real numbers in the benchmark's image order → float64 [I]."""
  try:
    array = np.load(io.BytesIO(data), allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise ScoreFileError(f"{path}: not a readable .npy of numbers ({e})") from e
  if not isinstance(array, np.ndarray):
    raise ScoreFileError(f"{path}: an .npz archive; a score file is one array saved with np.save")
  if array.dtype.kind not in "fiu" or not (
      array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1)):
    raise ScoreFileError(f"{path}: holds {array.dtype} {list(array.shape)}; expected one real "
                         "number per benchmark image, shape [I] or [I, 1], in the image order")
  return array.reshape(-1).astype(np.float64)


# What a pickle of numpy scalars and arrays names, resolved to the running numpy's callables
# (numpy 1 pickles say numpy.core.multiarray, numpy 2 numpy._core.multiarray).
_SCALAR = np.float64(0).__reduce__()[0]
_RECONSTRUCT = np.zeros(()).__reduce__()[0]


def _reconstruct(cls, shape, typecode):
  if cls is not np.ndarray:
    raise ScoreFileError(f"refusing to load: the pickle would build a {cls!r} (only numpy arrays)")
  return _RECONSTRUCT(cls, shape, typecode)


def _latin1_bytes(text, encoding="utf-8"):
  """Protocol 0-2 pickles spell bytes as _codecs.encode(str, "latin1"): that call only."""
  if isinstance(text, str) and encoding in ("latin1", "latin-1"):
    return text.encode("latin-1")
  raise ScoreFileError(f"refusing to load: the pickle would call _codecs.encode({encoding!r})")


_ALLOWED = {
    ("numpy.core.multiarray", "scalar"): _SCALAR,
    ("numpy._core.multiarray", "scalar"): _SCALAR,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_bytes,
}


class _NumbersUnpickler(pickle.Unpickler):
  """Builds containers, strings, numbers and numpy scalars/arrays; any other global a pickle
  names (os.system, builtins.eval, ...) is refused before it is looked up, let alone called."""

  def find_class(self, module: str, name: str) -> Any:
    found = _ALLOWED.get((module, name))
    if found is None:
      raise ScoreFileError(f"refusing to load: the pickle would call {module}.{name}")
    return found


def _as_number(value: Any) -> float | None:
  """A Python or numpy real number, or a 1-element numeric array → float; else None."""
  if isinstance(value, (bool, np.bool_)):
    return None
  if isinstance(value, (int, float, np.integer, np.floating)):
    return float(value)
  if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "fiu":
    return float(value.reshape(()))
  return None


def _read_pickle(path: str, data: bytes) -> tuple[list[str], np.ndarray]:
  """eDifFIQA's `{image path: score}` pickle → (names, scores [N]), without running its code."""
  try:
    loaded = _NumbersUnpickler(io.BytesIO(data)).load()
  except ScoreFileError as e:
    raise ScoreFileError(f"{path}: {e}: a score pickle holds only a dict of names and numbers. "
                         "Do not load this file") from None
  except Exception as e:  # pylint: disable=broad-except  (any malformed pickle)
    raise ScoreFileError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
  if not isinstance(loaded, dict):
    raise ScoreFileError(f"{path}: holds a {type(loaded).__name__}; expected eDifFIQA's dict "
                         "{image path: score}")
  names, scores, problems = [], [], []
  for key, value in loaded.items():
    number = _as_number(value)
    if not isinstance(key, str) or number is None:
      problems.append(f"{key!r}: {type(value).__name__} {value!r}"[:120])
    else:
      names.append(key)
      scores.append(number)
  if problems:
    raise _bad(path, "entries are not 'image path (str): number'", problems,
               "eDifFIQA's inference.py writes {image path: score}")
  if not names:
    raise ScoreFileError(f"{path}: an empty dict; the file holds no scores")
  return names, np.asarray(scores, dtype=np.float64)


# ── matching ────────────────────────────────────────────────────────────────────────────────


def name_parts(name: str) -> tuple[str, ...]:
  """A name's path components as matching sees them: `.\\img\\00012.JPG` → ("img", "12")."""
  parts = name.strip().replace("\\", "/").split("/")
  if "" in parts or "." in parts:
    parts = [p for p in parts if p not in ("", ".")]
    if not parts:
      return ()
  last = parts[-1]
  dot = last.rfind(".")
  if dot > 0 and last[dot:].lower() in _EXTENSIONS:
    last = last[:dot]
  if last.isdigit() and last.isascii():
    last = str(int(last))
  parts[-1] = last
  return tuple(parts)


class _SuffixIndex:
  """Every trailing run of path components of every benchmark image → the images ending in it."""

  def __init__(self, image_parts: Sequence[tuple[str, ...]]):
    self.parts = image_parts
    self.one: dict[tuple[str, ...], int] = {}            # -1: several images (see `several`)
    self.several: dict[tuple[str, ...], list[int]] = {}
    self.depth = max(map(len, image_parts), default=0)   # no key is longer
    for i, parts in enumerate(image_parts):
      for start in range(len(parts)):
        key = parts[start:]
        found = self.one.get(key)
        if found is None:
          self.one[key] = i
        elif found >= 0:
          self.one[key] = -1
          self.several[key] = [found, i]
        else:
          self.several[key].append(i)

  def lookup(self, parts: tuple[str, ...]) -> tuple[list[int], int]:
    """(images, strength) an entry claims: those ending in its longest trailing run that any
    image ends in; among several, the one whose whole name is the entry's wins. Strength grows
    with the run's length (an exact whole name a half step more); ([], 0): no image."""
    for start in range(max(0, len(parts) - self.depth), len(parts)):
      key = parts[start:]
      found = self.one.get(key)
      if found is None:
        continue
      strength = 2 * len(key)
      if found >= 0:
        return [found], strength
      images = self.several[key]
      exact = [i for i in images if self.parts[i] == parts] if start == 0 else []
      return (exact, strength + 1) if len(exact) == 1 else (images, strength)
    return [], 0


def _show(items: Sequence[Any], text=repr) -> str:
  """The first few of `items` as text, "…" when there are more."""
  return ", ".join(text(x) for x in items[:_SHOWN]) + (", …" if len(items) > _SHOWN else "")


def match_names(file_names: Sequence[str], image_names: Sequence[str], what: str) -> np.ndarray:
  """int64 [I]: the row of `file_names` that scores each benchmark image.

  Every name is normalised: `\\` → `/`, `./` dropped, split into path components; the last one
  loses an image extension (.jpg .jpeg .png .bmp .webp .tif .tiff .ppm .pgm, any case) and, when
  all digits, its leading zeros (`images/12.jpg` ~ `00012`). An entry names the images that end
  in the longest trailing run of its components any image ends in (`/data/lfw/img/12.jpg` →
  `img/00012`; `12.jpg` → `img/12.png` when no other image is called 12, else "ambiguous"; of
  several, one whose whole name equals the entry wins). An image takes the entry sharing its
  longest run: two entries sharing equally long runs are "duplicated" (the same name twice
  too), an image no entry names is "missing". Entries that score no image are fine (a file may
  cover a larger set): they are counted in the log.
  """
  image_names = [str(n) for n in image_names]        # numpy strings print as np.str_('…')
  file_names = [str(n) for n in file_names]
  index = _SuffixIndex([name_parts(n) for n in image_names])
  strength = [0] * len(image_names)               # of each image's best entry so far
  best = [-1] * len(image_names)
  ties: dict[int, list[int]] = {}                 # image → further entries as strong as `best`
  ambiguous: dict[int, list[int]] = {}            # entry → the images it names equally well
  for row, name in enumerate(file_names):
    images, s = index.lookup(name_parts(name))
    if len(images) > 1:
      ambiguous[row] = images
    for i in images:
      if s > strength[i]:
        strength[i], best[i] = s, row
        ties.pop(i, None)
      elif s == strength[i]:
        ties.setdefault(i, []).append(row)
  rows = np.asarray(best, dtype=np.int64)
  _check_matches(file_names, image_names, what, rows, ties, ambiguous)
  unused = len(file_names) - len(np.unique(rows))
  if unused:
    logging.info("%s: %d of the file's %d entries score no image of the benchmark (a file may "
                 "cover a larger set)", what, unused, len(file_names))
  return rows


def _check_matches(file_names: Sequence[str], image_names: Sequence[str], what: str,
                   rows: np.ndarray, ties: dict[int, list[int]],
                   ambiguous: dict[int, list[int]]) -> None:
  """One error counting every missing, duplicated and ambiguous name, a few of each shown."""
  claimants = set(rows[rows >= 0].tolist()).union(*ties.values())
  blurred = [e for e in ambiguous if e in claimants]     # ambiguous where it decides an image
  duplicated = [i for i, extra in ties.items()
                if not any(e in ambiguous for e in [int(rows[i])] + extra)]
  missing = np.flatnonzero(rows < 0)
  problems = []
  if missing.size:
    problems.append(
        f"missing ({missing.size} of the {len(image_names)} images have no entry): "
        f"{_show(missing, lambda i: repr(image_names[i]))}; the file's names look like "
        f"{_show(list(file_names[:3])) or 'nothing (it is empty)'}")
  if duplicated:
    problems.append(f"duplicated ({len(duplicated)} images have several entries): " + _show(
        duplicated, lambda i: f"{image_names[i]!r} ← " + " and ".join(
            repr(file_names[e]) for e in [int(rows[i])] + ties[i][:2])))
  if blurred:
    problems.append(f"ambiguous ({len(blurred)} entries name several images equally well; "
                    "give them more of their path): " + _show(
        blurred, lambda e: f"{file_names[e]!r} → " + ", ".join(
            repr(image_names[i]) for i in ambiguous[e][:3])))
  if problems:
    raise ScoreFileError(
        f"{what}: the score file does not fit the benchmark's images. " + ". ".join(problems)
        + ". Names match by their trailing path components, without image extensions or "
        "leading zeros (docs/evaluation.md, \"Compare with other methods\"); fix the file or "
        f"pass the file of this benchmark as {SYNTAX}")


def image_quality(entry: ScoreEntry, file: ScoreFile, image_names: Sequence[str],
                  what: str) -> np.ndarray:
  """float32 [I] quality per benchmark image, higher = better: the file's scores matched to
  the images (a .npy: taken in order), negated when `entry.lower_is_better`."""
  if file.names is None:
    if len(file.scores) != len(image_names):
      raise ScoreFileError(
          f"{what}: {file.path} holds {len(file.scores)} scores, the benchmark has "
          f"{len(image_names)} images; a .npy score file holds one score per image in the "
          "benchmark's order (or use a format with names)")
    rows = np.arange(len(image_names))
  else:
    rows = match_names(file.names, image_names, what)
  values = file.scores[rows]
  with np.errstate(over="ignore"):                # beyond float32: inf, refused below
    quality = (-values if entry.lower_is_better else values).astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(quality))
  if bad.size:
    raise ScoreFileError(
        f"{what}: {bad.size} benchmark images have a score that is NaN, infinite or beyond "
        f"float32 (" + _show(bad, lambda i: f"{image_names[i]!r}: {float(values[i])!r}")
        + f"); fix {file.path} (score those images, or remove them from the benchmark)")
  return quality
