"""Loading every model (one loader) and scoring uint8 face crops at every exit in one call.

    import exfiqa_jax as fx
    model = fx.load("vitfiqa_token.pt")   # or a converted directory
    out = model.score(images)    # uint8 [B, H, W, 3] RGB, any B
    out["exit_scores"] [B, L]  out["ex_fiqa_f"] [B]  out["ex_fiqa_fw"] [B]
    out["attn_scores"] [B, L]  out["embedding"] [B, E]  (+ out["attn_maps"] [B, L, N])
    out["q100_exit_1"] .. out["q100_ex_fiqa_fw"] [B]   # 0–100, when the model directory has a
                                 # quality_mapping.json (the early_exit job stores it there)
    out = model.score(images, exit=7)   # the program truncated after block 7: exits 1..7 only,
                                        # ex_fiqa_f/fw then fuse exits 1..7 (docs/methods.md)
    result = model.cascade(images, thresholds)   # adaptive early exits (models/exits.py)

Mode "fr" models (insightface/CVLFace ViTs) have no quality head: their result holds
attn_scores, embedding (and attn_maps), and ViTNT-FIQA's vitnt, vitnt_uniform [B] from the same
pass. Higher = better quality in every score.

Other quality methods (docs/methods.md, Baselines; names in exfiqa_jax/methods/registry.py):

    model = fx.load("crfiqa_r100.pth")                  # the family implies crfiqa
    model = fx.load("r100.pth", method="serfiq", passes=100)
    model.score(images)     # {"serfiq": [B]}; model.columns names them
    fx.load("vitfiqa_token.pt", method="vitnt")         # + vitnt, vitnt_uniform (an extension)
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from exfiqa_jax import checkpoints, columns, convert, fusion, models, parallel, quality_mapping
from exfiqa_jax.convert import strict
from exfiqa_jax.convert.strict import CheckpointError
from exfiqa_jax.data import preprocess
from exfiqa_jax.methods import crfiqa, ediffiqa, grafiqs, magface, registry, serfiq, vitnt
from exfiqa_jax.methods import scorer as scorer_lib
from exfiqa_jax.models import cascade_cost
from exfiqa_jax.models import exits as exits_lib
from exfiqa_jax.models import iresnet, vit
from exfiqa_jax.models.vit import QUALITY_MODES

SCORERS: dict[str, Callable[..., scorer_lib.Scorer]] = {
    m.METHOD: m.scorer for m in (crfiqa, ediffiqa, magface, serfiq, grafiqs, vitnt)}


def resize_images(images: np.ndarray, size: int = preprocess.IMAGE_SIZE) -> np.ndarray:
  """uint8 [B, H, W, 3] → [B, size, size, 3], bilinear (PIL, as for decoded files)."""
  if images.shape[1:3] == (size, size):
    return images
  return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.BILINEAR))
                   for im in images]) if len(images) else images.reshape(0, size, size, 3)


COMPUTE_DTYPES = ("float32", "bfloat16")


def check_compute_dtype(name: str | None, flag: str = "dtype=") -> str:
  """The matmul dtype of a ViT, "float32" (default for None or "") or "bfloat16"
  (docs/accelerators.md, "bf16"); anything else is a ValueError naming `flag`."""
  name = str(name or "float32")
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"{flag}{name!r} is not a compute dtype; use one of {COMPUTE_DTYPES}")
  return name


class BatchedModel:
  """What every loaded model shares: uint8 images in, chunks of `batch_size` rows padded to
  powers of two, sharded over every device (`run_batch`), numpy columns out. `identity` is
  what `load` read (checkpoints.read_pt / read_model: the digest of exactly the bytes loaded),
  what every cached result of the model records; None for a model built in memory."""
  batch_size: int
  image_size: int
  identity: dict[str, Any] | None = None

  def _set_batch_size(self, batch_size: int) -> None:
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
      raise ValueError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    self.batch_size = parallel.round_up_to_devices(int(batch_size))

  def padded_size(self, n: int) -> int:
    """Padded rows for a chunk of n ≤ batch_size: powers of two, so few programs compile."""
    return min(self.batch_size, parallel.round_up_to_devices(parallel.next_pow2(n)))

  def _host_images(self, images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"images must be uint8 [B, H, W, 3] RGB, got {images.dtype} "
                       f"{list(images.shape)} (decode files with exfiqa_jax.data.preprocess."
                       "decode_image)")
    if jax.process_count() > 1:
      raise NotImplementedError(f"{type(self).__name__}.{what} feeds from one host; on a "
                                "multi-host job use run_batch with each host's rows (see "
                                "exfiqa_jax/tasks/score.py)")
    return resize_images(images, self.image_size)

  def _score(self, images: np.ndarray, align: str, face: str,
             run: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """`score` for any model: `run` maps one padded uint8 batch to its results."""
    from exfiqa_jax.detection import faces, settings
    if settings.check_align_mode(align) == "detect":
      found = faces.detect_and_align(images, face=face, size=self.image_size)
      out = self._score(found.crops, "none", face, run)
      return {**out, "image": found.image, "face": found.face, "num_faces": found.num_faces,
              "det_score": found.score, "box": found.box, "landmarks": found.landmarks,
              "no_face": np.asarray(found.no_face, np.int64)}
    images = self._host_images(images, "score")
    chunks = []
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      size = self.padded_size(len(chunk))
      padded = np.concatenate([chunk, np.zeros((size - len(chunk),) + chunk.shape[1:],
                                                np.uint8)])
      chunks.append({k: v[:len(chunk)] for k, v in run(padded).items()})
    if not chunks:
      result = run(np.zeros((self.padded_size(1), self.image_size, self.image_size, 3),
                            np.uint8))
      return {k: v[:0] for k, v in result.items()}
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


class QualityModel(BatchedModel):
  """A loaded ViT with its variables on every device; one compiled program per shape/flags.
  `module.dtype` is the matmul dtype (bfloat16: norms, heads and ATTN statistics stay float32,
  models/vit.py); `dtype` names it. `vitnt` (ViTNT-FIQA's options, methods/registry.py) adds
  the vitnt, vitnt_uniform columns from the same pass (mode "fr" models get them from `load`)."""

  def __init__(self, module: Any, variables: Any, model_config: dict[str, Any],
               batch_size: int = 64, vitnt: Mapping[str, Any] | None = None):
    self.module = module
    self.dtype = np.dtype(getattr(module, "dtype", np.float32)).name
    self.model_config = dict(model_config)
    self.mode = model_config["mode"]
    self.num_exits = int(model_config["depth"])
    self.image_size = int(model_config.get("img_size", preprocess.IMAGE_SIZE))
    self._set_batch_size(batch_size)
    self.vitnt = None if vitnt is None else registry.options(registry.VITNT, vitnt)
    self.method = registry.VITNT if self.vitnt is not None else registry.IMPLIED
    self.variables = jax.device_put(variables, parallel.replicated())
    self._fns: dict[tuple[bool, int], Any] = {}
    self._truncated: dict[int, Any] = {self.num_exits: self.variables}   # on device, per exit
    self._cascades: dict[tuple[int, ...], exits_lib.Cascade] = {}
    self._segment_programs: dict = {}     # shared by every exit set's Cascade
    self._vitnt_scorer: scorer_lib.Scorer | None = None
    self._mapping: quality_mapping.QualityMapping | None = None
    self._mapping_from: tuple[str, str] | None = None     # load's (path, mapping=), read lazily

  @property
  def mapping(self) -> quality_mapping.QualityMapping | None:
    """The 0–100 mapping `score` applies: load's `mapping=` (by default the one stored with the
    model directory), read at first use, so jobs that never call `score` never read it."""
    if self._mapping_from is not None:
      self._mapping = quality_mapping.mapping_for(*self._mapping_from)
      self._mapping_from = None
    return self._mapping

  @mapping.setter
  def mapping(self, value: quality_mapping.QualityMapping | None) -> None:
    self._mapping, self._mapping_from = value, None

  @property
  def has_exits(self) -> bool:
    """Quality modes have exit scores and fusions; mode "fr" only ATTN-FIQA scores."""
    return self.mode in QUALITY_MODES

  @property
  def columns(self) -> tuple[str, ...]:
    """The quality columns of a whole-model run, in scores.csv order (exfiqa_jax/columns.py)."""
    vitnt_columns = vitnt.COLUMNS if self.vitnt is not None else ()
    return tuple(columns.score_names(self.num_exits, self.has_exits)) + vitnt_columns

  def method_identity(self) -> dict[str, Any]:
    """What the scores depend on beyond the checkpoint: {} for the plain ViT-FIQA pass (cache
    identities written before methods existed stay valid), else the method and its options."""
    return {} if self.vitnt is None else {"method": self.method, "options": dict(self.vitnt)}

  def resolve_exit(self, exit: int | None) -> int:
    """Blocks the program runs for `exit`: k in 1..L, 0 or None = all L; else a ValueError
    naming the entry point's setting (`exit=`, a job's `--config.exit=`)."""
    try:
      return exits_lib.check_exit(exit, self.num_exits)
    except ValueError:
      raise ValueError(f"{strict.flag('exit')}{exit!r}: this model has {self.num_exits} "
                       f"blocks; a fixed exit is one of 1..{self.num_exits} (the block after "
                       f"which the program stops), 0 = all {self.num_exits} exits") from None

  def variables_at(self, exit: int | None) -> Any:
    """The variables of the program truncated after block k (cached on the devices)."""
    k = self.resolve_exit(exit)
    if k not in self._truncated:
      self._truncated[k] = jax.device_put(exits_lib.truncate_variables(self.variables, k),
                                          parallel.replicated())
    return self._truncated[k]

  def _vitnt_spec(self, k: int) -> vit.VitntSpec | None:
    """ViTNT-FIQA inside the pass of k blocks (every block of it, or the first few), or None
    when the selected blocks are not the pass's first ones: they then run as their own program
    over the whole model's blocks (methods/vitnt.py), as the official loop does."""
    if self.vitnt is None:
      return None
    if not self.vitnt["blocks"]:
      return vitnt.in_pass_spec(k, None, self.vitnt["attention"])
    chosen = vitnt.check_blocks(self.vitnt["blocks"], self.num_exits)
    if chosen != tuple(range(len(chosen))) or chosen[-1] >= k:
      return None
    return vitnt.in_pass_spec(k, chosen, self.vitnt["attention"])

  def _forward(self, attn_maps: bool, k: int):
    """The jitted program that stops after block k (k = L: the whole model)."""
    if (attn_maps, k) not in self._fns:
      has_exits = self.has_exits
      module = self.module if k == self.num_exits else self.module.clone(depth=k)
      spec = self._vitnt_spec(k)
      scaling = self.vitnt["scaling"] if self.vitnt is not None else None

      def forward(variables, images_uint8):
        x = preprocess.normalize(images_uint8)
        _, out = module.apply(variables, x, return_attn_maps=attn_maps,
                              **({"vitnt": spec} if spec is not None else {}))
        result = {"attn_scores": out["attn_scores"], "embedding": out["embedding"]}
        if has_exits:
          result["exit_scores"] = out["exit_scores"]
          result["ex_fiqa_f"] = fusion.fuse_f(out["exit_scores"])
          result["ex_fiqa_fw"] = fusion.fuse_fw(out["exit_scores"])
        if attn_maps:
          result["attn_maps"] = out["attn_maps"]
        if spec is not None:
          result.update(vitnt.columns_from_outputs(out, scaling))
        return result

      self._fns[(attn_maps, k)] = jax.jit(forward)
    return self._fns[(attn_maps, k)]

  def _vitnt_apart(self, batch: jax.Array) -> dict[str, jax.Array]:
    """ViTNT-FIQA of selected blocks that are not the pass's first ones: their own program."""
    if self._vitnt_scorer is None:
      found = vitnt.scorer(self.module, self.variables, self.model_config, **self.vitnt)
      self._vitnt_scorer = dataclasses.replace(
          found, variables=jax.device_put(found.variables, parallel.replicated()))
    return self._vitnt_scorer(batch)

  def run_batch(self, local_images: np.ndarray, attn_maps: bool = False,
                exit: int | None = None) -> dict[str, np.ndarray]:
    """One sharded call. `local_images`: this process's rows (uint8 [b, S, S, 3]) of a global
    batch whose size is a multiple of the device count; returns the global batch's results.
    `exit=k` runs the program truncated after block k: every per-exit array has k columns,
    the fusions fuse exits 1..k, the embedding is block k's (0/None = all L exits)."""
    k = self.resolve_exit(exit)
    batch = parallel.host_batch_to_global(np.asarray(local_images, np.uint8))
    out = self._forward(bool(attn_maps), k)(self.variables_at(k), batch)
    if self.vitnt is not None and self._vitnt_spec(k) is None:
      out = {**out, **self._vitnt_apart(batch)}
    return parallel.global_to_host(out)

  def score(self, images: np.ndarray, attn_maps: bool = False,
            exit: int | None = None, align: str = "none", face: str = "primary"
            ) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] RGB (any B, H, W) → dict of numpy arrays (see the module doc).

    Chunks of `batch_size` rows, each padded to a power of two (at most log2(batch_size) + 1
    compiled shapes); padded rows are dropped. The CLI pads every batch to one fixed shape.
    `exit=k` (1..L) runs only blocks 1..k (see run_batch); 0/None = all L exits.
    `align="detect"`: `images` are raw photos (a list, any sizes); each row is then a detected,
    aligned face (detection/faces.py; `face` "primary" per photo or "all"), and the result also
    holds image (its photo's index), face, num_faces, det_score, box [N, 4], landmarks
    [N, 5, 2] and no_face (indices of photos without a face); docs/data.md.
    With a 0–100 mapping (`mapping`: load's, the model directory's quality_mapping.json) the
    result also holds q100_<column> [N] for each mapped column, as the score job's scores.csv
    (quality_mapping.QualityMapping.apply; under exit=k only q100_exit_1..k: the fusions there
    fuse exits 1..k, not the L exits the mapping was fitted on).
    """
    self.resolve_exit(exit)
    out = self._score(images, align, face, lambda batch: self.run_batch(batch, attn_maps, exit))
    return {**out, **self.mapping.apply(out)} if self.mapping is not None else out

  def cascade(self, images: np.ndarray,
              thresholds: exits_lib.CascadeThresholds | float | None = None,
              ladder: Sequence[int] | None = None) -> exits_lib.CascadeResult:
    """Adaptive early exits (exfiqa_jax/models/exits.py; docs/methods.md): uint8 [N, H, W, 3]
    → per image the score at the exit it left at, that exit, the decision and its GFLOPs.

    `thresholds`: CascadeThresholds, or the cascade the early_exit job calibrated and stored
    with this model's directory (cascade.json): None = its headline agreement target, a float
    = that target. Segments end at thresholds.exits; buckets come from `ladder` (default
    powers of two up to batch_size), rounded to multiples of the device count; survivors are
    pooled across the whole array. Single host. A stream of chunks: `cascade_stream`.
    """
    thresholds = self.cascade_thresholds(thresholds)
    images = self._host_images(images, "cascade")
    return self.cascade_engine(thresholds.exits).run(images, thresholds, ladder)

  def cascade_stream(self, thresholds: exits_lib.CascadeThresholds | float | None = None,
                     ladder: Sequence[int] | None = None) -> exits_lib.CascadeStream:
    """The cascade over chunks pushed one by one (a folder read chunk by chunk): survivors
    carried across chunks, results in input order (exits.CascadeStream); push images already
    at the model's size (resize_images)."""
    thresholds = self.cascade_thresholds(thresholds)
    self._host_images(np.zeros((0, self.image_size, self.image_size, 3), np.uint8), "cascade")
    return self.cascade_engine(thresholds.exits).stream(thresholds, ladder)

  def cascade_thresholds(self, thresholds: exits_lib.CascadeThresholds | float | None = None
                         ) -> exits_lib.CascadeThresholds:
    """`thresholds` as given, or the calibrated cascade stored with the model directory this
    model was loaded from (None: the headline target; a float: that agreement target)."""
    if not self.has_exits:
      raise ValueError(f"mode {self.mode!r} models have no exit scores to cascade on")
    if not isinstance(thresholds, exits_lib.CascadeThresholds):
      directory = (getattr(self, "identity", None) or {}).get("path")
      if not directory or not os.path.isdir(directory):
        raise ValueError("this model was not loaded from a converted directory, so it has no "
                         "stored cascade; pass CascadeThresholds (or load the directory the "
                         "early_exit job wrote its cascade.json into)")
      thresholds = stored_cascade(directory, thresholds)
    thresholds.check(self.num_exits)
    return thresholds

  def cascade_engine(self, exits: Sequence[int]) -> exits_lib.Cascade:
    """The compiled segment programs for one exit set (cached; every set shares the
    programs of the segments it has in common with another)."""
    key = exits_lib.check_exits(exits, self.num_exits)
    if key not in self._cascades:
      self._cascades[key] = exits_lib.Cascade(self.module, self.variables, key, self.batch_size,
                                              self._segment_programs)
    return self._cascades[key]

  def cascade_costs(self, folder: str | None = None, repeats: int = 5,
                    min_seconds: float = cascade_cost.MIN_SECONDS) -> cascade_cost.CostModel:
    """The measured cost model of this model's cascade on this device (models/cascade_cost.py):
    kept in `folder` (CostModel.folder_for(the compile cache); None = in memory), its entries
    measured when first asked for (at least `repeats` interleaved rounds, more until each
    program has run `min_seconds`: cascade_cost.time_calls). Single host."""
    if jax.process_count() > 1:
      raise NotImplementedError("cascade costs are measured on one host")
    depth = self.num_exits

    def caller(kind: str, start: int, stop: int, rows: int) -> Callable[[], Any]:
      if kind == "full":
        images = np.zeros((rows, self.image_size, self.image_size, 3), np.uint8)
        return lambda: self.run_batch(images)
      if kind == "compaction":
        return self.cascade_engine(exits_lib.default_exits(depth)).compaction_call(rows)
      ex = ((stop,) if start == 0 else (start, stop)) + ((depth,) if stop < depth else ())
      return self.cascade_engine(ex).segment_call(0 if start == 0 else 1, rows)

    return cascade_cost.CostModel.open(cascade_cost.cost_key(self.model_config, self.dtype),
                                       caller, folder, repeats, min_seconds)


def stored_cascade(directory: str, target: float | None = None) -> exits_lib.CascadeThresholds:
  """The cascade the early_exit job stored with a model directory (None: its headline
  agreement target), with a warning when it was calibrated on another device: the exits that
  pay in seconds there need not pay here (models/cascade_cost.py)."""
  thresholds, record = exits_lib.stored_thresholds(directory, target)
  if record.get("device") not in (None, parallel.device_info()):
    logging.warning("the cascade stored in %s was calibrated for %s, not this device; run the "
                    "early_exit job here for thresholds that pay here", directory,
                    record["device"])
  return thresholds


class MethodModel(BatchedModel):
  """A quality method bound to its model (methods/; CR-FIQA, eDifFIQA, MagFace, SER-FIQ,
  GraFIQs, or ViTNT-FIQA on its own selected blocks), on every device, with the interface the
  jobs use from QualityModel: `score`, `run_batch`, `padded_size`, `batch_size`, `columns`.
  No exits: `has_exits` is False and `exit` must be 0. Runs in float32."""
  has_exits = False
  num_exits = 0
  dtype = "float32"

  def __init__(self, scorer: scorer_lib.Scorer, model_config: Mapping[str, Any],
               options: Mapping[str, Any] | None = None, batch_size: int = 64):
    self.method = scorer.method
    self.columns = tuple(scorer.columns)
    self.options = dict(options or {})
    self.model_config = dict(model_config)
    self.image_size = int(model_config.get("img_size", preprocess.IMAGE_SIZE))
    self._set_batch_size(batch_size)
    self.variables = jax.device_put(scorer.variables, parallel.replicated())
    self._apply = scorer.apply

  def method_identity(self) -> dict[str, Any]:
    """The method and its options (part of every cache identity of its scores)."""
    return {"method": self.method, "options": dict(self.options)}

  def resolve_exit(self, exit: int | None) -> int:
    """0: a method has no exits; any other `exit` is an error naming the setting."""
    if exit:
      raise ValueError(f"{strict.flag('exit')}{exit}: {strict.flag('method')}{self.method} has "
                       "no early exits (exits are the ViT-FIQA models'); leave it at 0")
    return 0

  def run_batch(self, local_images: np.ndarray, exit: int | None = None
                ) -> dict[str, np.ndarray]:
    """One sharded call: this process's rows (uint8 [b, S, S, 3]) of a global batch whose size
    is a multiple of the device count → the global batch's {column: [B]}."""
    self.resolve_exit(exit)
    batch = parallel.host_batch_to_global(np.asarray(local_images, np.uint8))
    return parallel.global_to_host(self._apply(self.variables, batch))

  def score(self, images: np.ndarray, align: str = "none", face: str = "primary"
            ) -> dict[str, np.ndarray]:
    """uint8 [B, H, W, 3] RGB (any B, H, W) → {column: [B]} (see QualityModel.score for the
    batching and `align="detect"`)."""
    return self._score(images, align, face, self.run_batch)


def load_variables(path: str | os.PathLike, num_heads: int | None = None,
                   family: str | None = None) -> tuple[Any, dict[str, Any]]:
  """(variables, model_config) from a converted directory or a PyTorch file (`read`)."""
  loaded = read(path, num_heads=num_heads, family=family)
  return loaded.variables, loaded.model_config


def read(path: str | os.PathLike, num_heads: int | None = None,
         family: str | None = None) -> checkpoints.Loaded:
  """(variables, model_config, identity) from a converted directory or a PyTorch file.

  The one loader of every model (quality ViTs and FR networks): a directory is restored against
  its model_config.json; a `.pt`/`.pth` is read safely, converted strictly and verified by the
  round trip (exfiqa_jax.convert). The checkpoint is read once and `identity` is of the bytes
  that were loaded (checkpoints.read_pt / read_model). `num_heads` is for a ViT `.pt` (no shape
  records it): None or 0 = the architecture's own count (a published one's, else 8 with a
  warning; convert/vit_keys.py RELEASES); a directory has its count in model_config.json, and a
  different one passed here is ignored with a warning. `family` names a family the keys cannot
  tell apart.
  """
  path = os.fspath(path)
  # errors name the API's arguments, unless a main.py task already named its --config flags
  with strict.flags_named(outer_wins=True, family="family=", num_heads="num_heads="):
    if os.path.isdir(path):
      loaded = checkpoints.read_model(path)
      config = loaded.model_config
      if num_heads and "num_heads" in config and num_heads != config["num_heads"]:
        logging.warning("%s was converted with num_heads=%d (its %s); ignoring %s%d. Leave it "
                        "at 0 for a converted directory.", path, config["num_heads"],
                        checkpoints.CONFIG_FILE, strict.flag("num_heads"), num_heads)
      return loaded
    sd, ident = checkpoints.read_pt(path)
    variables, config = convert.convert_state_dict(sd, num_heads=num_heads or None,
                                                   family=family, source=path)
    return checkpoints.Loaded(variables, config, ident)


def implied_method(model_config: Mapping[str, Any]) -> str:
  """The method a checkpoint implies when none is asked: "" for a ViT-FIQA model (exits,
  fusions, ATTN), vitnt for a face-recognition ViT (ATTN + ViTNT in one pass), the family's
  own method for CR-FIQA, eDifFIQA and MagFace; a plain FR CNN is an error listing what
  applies to it."""
  if "mode" in model_config:
    return registry.IMPLIED if model_config["mode"] in QUALITY_MODES else registry.VITNT
  family = model_config.get("family", "")
  if family in registry.FAMILY_METHODS:
    return registry.FAMILY_METHODS[family]
  raise CheckpointError(f"this checkpoint is a {family or 'CNN'!r} face-recognition model "
                        "without a quality head; choose a quality method for it with "
                        f"{strict.flag('method')}<one of {', '.join(registry.FR_CNN_METHODS)}> "
                        "(docs/methods.md, Baselines), or use it as the FR model "
                        "(configs/embed.py)")


def load(path: str | os.PathLike, method: str = "", num_heads: int | None = None,
         family: str | None = None, batch_size: int = 64, dtype: str | None = None,
         method_options: Mapping[str, Mapping[str, Any]] | None = None, mapping: str = "",
         **options: Any) -> QualityModel | MethodModel:
  """A loaded quality model from a converted directory or a `.pt` file (converted in memory).

  `method` "" = what the checkpoint implies (`implied_method`), or one of
  methods/registry.METHODS (docs/methods.md, Baselines). `options` are the method's
  (registry.OPTIONS: their official defaults); `method_options` maps method → options (the
  config's per-method tables: the resolved method's table is used, `options` override it).
  A ViT-FIQA or FR ViT comes back as a QualityModel (vitnt: ATTN + ViTNT in the same pass;
  for a ViT-FIQA model the toolkit's extension), anything else as a MethodModel. A method that
  cannot apply is a ValueError naming `method=` (the task's flag inside a task).
  `mapping` (ViT-FIQA models): the 0–100 mapping whose q100_* columns `score` adds, as the
  score job's --config.quality_mapping: "" = the model directory's quality_mapping.json when it
  has one, "none" = no q100_* columns, or a quality_mapping.json (quality_mapping.mapping_for).
  `dtype` "bfloat16" runs a ViT's matmuls in bfloat16 (variables stay float32; LayerNorms,
  exit heads and ATTN statistics float32; docs/accelerators.md); methods run float32.
  """
  dtype = check_compute_dtype(dtype)
  with strict.flags_named(outer_wins=True, method="method="):
    flag = strict.flag("method")
    method = registry.check_method(method, flag)
    variables, config, ident = read(path, num_heads=num_heads, family=family)
    method = method or implied_method(config)
    opts = registry.options(method, {**(method_options or {}).get(method, {}), **options}, flag)
    if "mode" in config and method in (registry.IMPLIED, registry.VITNT):
      module = models.get_model(config, dtype=None if dtype == "float32" else jnp.dtype(dtype))
      model = QualityModel(module, variables, config, batch_size=batch_size,
                           vitnt=opts if method == registry.VITNT else None)
      model.identity = ident
      if model.has_exits:
        model._mapping_from = (path, mapping)
      return model
    if dtype != "float32":
      logging.info("%s%s runs in float32 (compute_dtype %s applies to ViTs)", flag, method,
                   dtype)
    scorer = SCORERS[method](models.get_model(config), variables, config, **opts)
  model = MethodModel(scorer, config, opts, batch_size=batch_size)
  model.identity = ident
  return model


def load_fr_model(path: str, family: str | None = None, input_scale: str | None = None,
                  num_heads: int | None = None) -> tuple[Any, Any, dict[str, Any]]:
  """(module, variables, model_config) of an FR model for `embedding.embed_images`
  (`read_fr_model` without the identity)."""
  return read_fr_model(path, family, input_scale, num_heads)[:3]


def read_fr_model(path: str, family: str | None = None, input_scale: str | None = None,
                  num_heads: int | None = None
                  ) -> tuple[Any, Any, dict[str, Any], dict[str, Any]]:
  """(module, variables, model_config, identity) of an FR model for `embedding.embed_images`;
  `identity` is of the bytes that were loaded (`read`).

  `input_scale` overrides the family's ("minus1_1" | "0_1"); iResNets come back with their
  BatchNorms folded into the convolutions (inference only, same outputs).
  """
  variables, model_config, ident = read(path, num_heads=num_heads, family=family)
  if input_scale:
    if input_scale not in preprocess.INPUT_SCALES:
      raise ValueError(f"input_scale must be one of {preprocess.INPUT_SCALES}, got "
                       f"{input_scale!r}")
    model_config = {**model_config, "input_scale": input_scale}
  model_config.setdefault("input_scale", "minus1_1")
  module = models.get_model(model_config)
  if isinstance(module, iresnet.IResNet):   # inference only: BatchNorms folded into the convs
    module, variables = iresnet.fold_batchnorm(module.config, variables, module.dtype)
  return module, variables, model_config, ident
