"""The evaluation: EDC numerics, comparisons, benchmarks, cached stages, the pipeline."""
