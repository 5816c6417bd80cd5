"""The training layer: the typed training config and recipes, the run (resume, history, records), the checkpoint
folder (layout, lock, rotation), EMA and the LR schedule, and the hybrid loss. `train.py` drives it with Accelerate.
"""
