"""exfiqa_jax/configs/early_exit.py, for the checkout's documented commands
(`python main.py --config=configs/early_exit.py`); installed, `exfiqa --config=early_exit` runs the same file."""
from exfiqa_jax.configs.early_exit import *  # noqa: F401,F403
