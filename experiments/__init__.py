"""Experiments built on the trainer: the paper's Amazon study (`python -m experiments.study`),
its torchrun worker, the attention case study and the report."""
