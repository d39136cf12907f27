"""TFDS builders for every data set the toolkit reads (array_record, no TensorFlow).

Open any data set the same way; it is built on the first call (a TFDS *manual download*: the
files must already be in `manual_dir`) and reused afterwards:

    from exfiqa_jax.data import builders
    source, info = builders.load("lfw", manual_dir="~/bins", data_dir="~/exfiqa_data")
    len(source); source[k]   # {"image": encoded bytes, "name": str, "image_id": int, ...ids}
    info.pairs               # {"index_a", "index_b", "is_genuine"} record positions [P]
    info.channel_order       # "rgb", or "bgr" for CR-FIQA quality_data folders

`load(name, manual_dir=None, data_dir=None, *, decode=False, channel_order=None,
overwrite=False, **options) -> (Source, LoadedInfo)`:
  name         a builder below, "builder/config" ("verification_bin/lfw"), or a benchmark
               alias (lfw, agedb_30, cfp_fp, calfw, cplfw, ...: verification_bin configs).
  manual_dir   folder with the user's files (needed to build; a wrong or missing one raises
               ManualDirError showing the expected layout).
  data_dir     where TFDS writes `<name>/<config>/1.0.0/` (default: the TFDS default).
  decode       True: "image" is uint8 [112, 112, 3] in `channel_order` (else encoded bytes,
               decode with `preprocess.decode_image(..., info.channel_order)`).
  options      build options (skip_corrupt=True leaves corrupt/missing images out and lists
               them in skipped_images.txt; others per builder); different options build into
               different configs, never over each other.
Records carry their own ids (name, image_id, and template/media/identity where they exist);
`info.pairs` and `info.record_arrays` are resolved to record positions through them.

| builder            | options                                  | pairs (info.pairs)                  |
|--------------------|------------------------------------------|-------------------------------------|
| verification_bin   | dataset="lfw" (file <dataset>.bin)       | index_a, index_b, is_genuine        |
| xqlfw              |                                          | index_a, index_b, is_genuine        |
| adience            | max_pairs, keep_all_genuine, seed        | index_a, index_b, is_genuine        |
| ijbc               | subset=N templates, image_format         | template_a, template_b, is_genuine  |
| quality_data       | dataset="lfw", pairs=True                | index_a, index_b, is_genuine        |
| image_folder       | pair_list=PATH                           | optional                            |
| synthetic_faces    | split (train/val/test), seed, sizes, ... | val/test: index_a, index_b, is_gen. |
| recordio_faces     | (insightface train.rec/.idx/property)    | none (its .bin sets: lfw, ...)      |
IJB-C records also come as info.record_arrays["template_id" | "media_id" | "faceness"].
"""
from __future__ import annotations

from exfiqa_jax.data.builders.base import DataError, ManualDirError
from exfiqa_jax.data.builders.loader import (ALIASES, REGISTRY, LoadedInfo, Source, build,
                                             builder_for, load)
from exfiqa_jax.data.builders import verification_bin  # noqa: F401  (registers)
from exfiqa_jax.data.builders import xqlfw  # noqa: F401
from exfiqa_jax.data.builders import adience  # noqa: F401
from exfiqa_jax.data.builders import ijbc  # noqa: F401
from exfiqa_jax.data.builders import quality_data  # noqa: F401
from exfiqa_jax.data.builders import image_folder  # noqa: F401
from exfiqa_jax.data.builders import synthetic_faces  # noqa: F401
from exfiqa_jax.data.builders import recordio_faces  # noqa: F401

__all__ = ["load", "build", "builder_for", "Source", "LoadedInfo", "REGISTRY", "ALIASES",
           "DataError", "ManualDirError"]
