"""exfiqa_jax/configs/train_crfiqa.py, for a checkout's documented commands
(`python main.py --config=configs/train_crfiqa.py`); installed: `exfiqa --config=train_crfiqa`."""
from exfiqa_jax.configs.train_crfiqa import *  # noqa: F401,F403
