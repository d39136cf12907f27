"""exfiqa_jax/configs/early_exit.py, for a checkout's documented commands
(`python main.py --config=configs/early_exit.py`); installed: `exfiqa --config=early_exit`."""
from exfiqa_jax.configs.early_exit import *  # noqa: F401,F403
