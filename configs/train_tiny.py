"""exfiqa_jax/configs/train_tiny.py, for a checkout's documented commands
(`python main.py --config=configs/train_tiny.py`); installed: `exfiqa --config=train_tiny`."""
from exfiqa_jax.configs.train_tiny import *  # noqa: F401,F403
