"""The data layer: what images a model learns from and is measured on.

Degradations and resizers (HR -> LR), Picture Information Content (`pic`, `pic_stats`), Random Filter Sampling
(`sampling`), training sources (folders and `datasets`), and the benchmark sets. Stands on `core` alone.
"""
