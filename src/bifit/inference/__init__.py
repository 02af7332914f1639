"""Inference: prediction on the four benchmarks in their official protocols (``benchmarks`` and
the per-benchmark modules) and a general-purpose predictor."""
