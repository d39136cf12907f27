r"""exfiqa-jax entry point, the same as the `exfiqa` console script (exfiqa_jax/cli.py).

  python main.py --config=configs/demo.py
  python main.py --config=configs/score.py --config.quality_model.path=X.pt \
      --config.images=DIR --config.output=OUT
  python main.py --config=configs/eval_ijbc.py --config.data.manual_dir=... \
      --config.quality_model.path=...

--config also takes a packaged config's name, from any folder (--config=demo,
--config=score:size=tiny: what `exfiqa` users type), or the path of a config file of your own.
"""
from exfiqa_jax import cli

if __name__ == "__main__":
  cli.run_main()
