"""exfiqa_jax/configs/eval_common.py (the configs' shared building blocks), for checkout code that
imports `configs.eval_common`."""
from exfiqa_jax.configs.eval_common import *  # noqa: F401,F403
