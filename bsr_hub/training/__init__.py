"""The training layer: the typed training config and recipes, the run (resume, history, records) and its end
(final evaluation, card, push), the checkpoint folder (layout, lock, rotation), EMA and the LR schedule, and the
hybrid loss and distillation's teacher. `train.py` drives it with Accelerate.
"""

from .checkpoints import CheckpointStateError, OutputBusyError, OutputLock
from .config import (
    FLAT_NAMES,
    OLD_SAMPLER_NAMES,
    RUN_WIDE,
    SECTIONS,
    TrainConfig,
    config_from_dict,
    config_to_yaml,
    field_type,
    resolve_config,
)
from .distill import DistillConfig, Teacher
from .finish import final_evaluation, publish
from .losses import HybridLoss, LossConfig
from .optim import EMA, choose_kernels, cudnn_benchmark_for, fp32_forward, load_matching_weights, step_decay
from .reporting import LossMeter, check_train_dir, describe_training_data, non_finite_message
from .resume import RESUME_GUARDED, ResumeChangedError, check_resume, resume_changes
from .run import TrainingRun
from .signals import StopRequest, end_data_workers_at_exit, ignore_stop_signals, launched_by_a_launcher

__all__ = [
    "EMA",
    "FLAT_NAMES",
    "OLD_SAMPLER_NAMES",
    "RESUME_GUARDED",
    "RUN_WIDE",
    "SECTIONS",
    "CheckpointStateError",
    "DistillConfig",
    "HybridLoss",
    "LossConfig",
    "LossMeter",
    "OutputBusyError",
    "OutputLock",
    "ResumeChangedError",
    "StopRequest",
    "Teacher",
    "TrainConfig",
    "TrainingRun",
    "check_resume",
    "check_train_dir",
    "choose_kernels",
    "config_from_dict",
    "config_to_yaml",
    "cudnn_benchmark_for",
    "describe_training_data",
    "end_data_workers_at_exit",
    "field_type",
    "final_evaluation",
    "fp32_forward",
    "ignore_stop_signals",
    "launched_by_a_launcher",
    "load_matching_weights",
    "non_finite_message",
    "publish",
    "resolve_config",
    "resume_changes",
    "step_decay",
]
