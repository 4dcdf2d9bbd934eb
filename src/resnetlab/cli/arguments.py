"""Arguments several commands share."""

# What precision "auto" resolves to (engine.runtime.resolve_precision), said alike by every command
PRECISION_AUTO = "auto: bf16 on CUDA GPUs with bf16 and on CPUs with AMX, else fp32"


def add_checkpoint_argument(parser) -> None:
    """The model to use: a checkpoint, a run directory or published weights by name."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR|WEIGHTS",
                        help="a checkpoint file, a run directory (its best.pt) or published weights by name "
                             "(resnetlab weights list)")
