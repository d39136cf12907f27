"""exfiqa_jax/configs/train_vitfiqa.py, for a checkout's documented commands
(`python main.py --config=configs/train_vitfiqa.py`); installed: `exfiqa --config=train_vitfiqa`."""
from exfiqa_jax.configs.train_vitfiqa import *  # noqa: F401,F403
