"""exfiqa_jax/configs/demo.py, for a checkout's documented commands
(`python main.py --config=configs/demo.py`); installed: `exfiqa --config=demo`."""
from exfiqa_jax.configs.demo import *  # noqa: F401,F403
