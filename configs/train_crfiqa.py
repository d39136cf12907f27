"""exfiqa_jax/configs/train_crfiqa.py, for the checkout's documented commands
(`python main.py --config=configs/train_crfiqa.py`); installed, `exfiqa --config=train_crfiqa` runs the same file."""
from exfiqa_jax.configs.train_crfiqa import *  # noqa: F401,F403
