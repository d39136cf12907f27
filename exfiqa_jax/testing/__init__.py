"""PyTorch twins of the models and helpers that the tests and benchmarks share."""
