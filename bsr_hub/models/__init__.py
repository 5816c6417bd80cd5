"""The models layer: the BSR network and its config and presets, checkpoints (bundled, local, on the Hub), a
checkpoint folder's records and model card, and the ONNX export of a model.

It stands on `core` and on the `inference` engine (`BSRModel.upscale` is `inference.upscale` on itself).
"""

from .card import (
    below_bicubic,
    card_eval_results,
    carry_records,
    check_card_target,
    render_model_card,
    robustness_table,
    update_card,
)
from .configuration import BSRConfig, ConfigError, list_presets
from .export import export_onnx
from .hub import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    PushError,
    bundled_checkpoints,
    DEFAULT_REASONS,
    default_checkpoint,
    default_for,
    list_checkpoints,
    push_failure,
    resolve_checkpoint,
)
from .modeling import BSRModel
from .network import BSRNetwork
from .records import (
    CARD_NAME,
    CARRIED_RECORDS,
    TRAINED_FOR,
    TRAINING_CONFIG_NAME,
    TRAINING_INFO_NAME,
    DatasetInfo,
    EvalResults,
    RecordError,
    Stage,
    TrainingRecord,
    format_duration,
    lineage_of,
    read_robustness,
    trained_for,
)

__all__ = [
    "CARD_NAME",
    "CARRIED_RECORDS",
    "CONFIG_NAME",
    "TRAINED_FOR",
    "TRAINING_CONFIG_NAME",
    "TRAINING_INFO_NAME",
    "WEIGHTS_NAME",
    "BSRConfig",
    "BSRModel",
    "BSRNetwork",
    "CheckpointError",
    "ConfigError",
    "PushError",
    "DatasetInfo",
    "EvalResults",
    "RecordError",
    "Stage",
    "TrainingRecord",
    "below_bicubic",
    "bundled_checkpoints",
    "card_eval_results",
    "carry_records",
    "check_card_target",
    "DEFAULT_REASONS",
    "default_checkpoint",
    "default_for",
    "export_onnx",
    "format_duration",
    "lineage_of",
    "list_checkpoints",
    "list_presets",
    "push_failure",
    "render_model_card",
    "resolve_checkpoint",
    "read_robustness",
    "robustness_table",
    "trained_for",
    "update_card",
]
