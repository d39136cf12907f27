"""exfiqa_jax/configs/demo.py, for the checkout's documented commands
(`python main.py --config=configs/demo.py`); installed, `exfiqa --config=demo` runs the same file."""
from exfiqa_jax.configs.demo import *  # noqa: F401,F403
