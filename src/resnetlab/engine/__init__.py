"""Training, evaluation, schedules, checkpoints and distributed execution."""
from .checkpoint import FORMAT, load_checkpoint, model_from_checkpoint, save_checkpoint
from .evaluate import PROTOCOLS, evaluate, evaluate_checkpoint
from .records import Artifact, Checkpoint, TrainingState
from .run_records import MetricsRow, RunSummary
from .schedules import ScheduleState, create_learning_rate_fn
from .signals import TrainingInterrupted
from .state import TrainingDiverged
from .train import StepParts, train_and_evaluate, train_step

__all__ = [
    "FORMAT", "load_checkpoint", "model_from_checkpoint", "save_checkpoint", "PROTOCOLS", "evaluate",
    "Artifact", "Checkpoint", "MetricsRow", "RunSummary", "TrainingState",
    "evaluate_checkpoint", "ScheduleState", "create_learning_rate_fn", "TrainingInterrupted",
    "StepParts", "TrainingDiverged", "train_and_evaluate", "train_step",
]
