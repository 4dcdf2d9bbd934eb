"""Arguments several commands share, and their vocabulary: each list of choices is the one its
library module validates against, imported from there, so the CLI cannot offer what the library refuses."""
from resnetlab.config import PROTOCOLS
from resnetlab.engine.runtime import COMPILE_MODES, DEVICE_FORMS, INFERENCE_PRECISIONS, PRECISIONS, SWITCH

AUTO_PRECISIONS = ["auto", *PRECISIONS]
AUTO_INFERENCE_PRECISIONS = ["auto", *INFERENCE_PRECISIONS]
FILE_PROTOCOLS = [p for p in PROTOCOLS if p != "multiscale"]  # predict and embed (multiscale: eval and the Python API)
__all__ = ["AUTO_INFERENCE_PRECISIONS", "AUTO_PRECISIONS", "COMPILE_MODES", "DEVICE_FORMS", "FILE_PROTOCOLS",
           "PROTOCOLS", "SWITCH", "add_checkpoint_argument", "positive_int"]


def positive_int(text: str) -> int:
    """argparse type for counts such as --batch-size: 0 or less is refused in one line, never taken as the default."""
    import argparse

    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# What precision "auto" resolves to (engine.runtime.resolve_precision), said alike by every command
PRECISION_AUTO = "auto: bf16 on CUDA GPUs with bf16, on CPUs with AMX and on AMD CPUs with AVX-512 BF16, else fp32"
INFERENCE_AUTO = ("auto: the fastest path whose top-1 answers agree with fp32's (compiled bf16 channels_last on CPUs "
                  "with AMX or AMD's AVX-512 BF16, compiled once per checkpoint and machine; folded fp32 elsewhere); "
                  "fp32: exact fp32")


def add_checkpoint_argument(parser) -> None:
    """The model to use: a checkpoint, a run directory or published weights by name."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR|WEIGHTS",
                        help="a checkpoint file, a run directory (its best.pt) or published weights by name "
                             "(resnetlab weights list)")
