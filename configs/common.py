"""exfiqa_jax/configs/common.py (the configs' shared building blocks), for checkout code that
imports `configs.common`."""
from exfiqa_jax.configs.common import *  # noqa: F401,F403
