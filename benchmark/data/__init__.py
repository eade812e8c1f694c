"""Datasets: image–caption pairs for training, labelled images for zero-shot evaluation."""

from benchmark.data.pairs import EvalSet, PairSet

__all__ = ["EvalSet", "PairSet"]
