"""Arguments several commands share."""


def add_checkpoint_argument(parser) -> None:
    """The model to use: a checkpoint, a run directory or published weights by name."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT|RUN_DIR|WEIGHTS",
                        help="a checkpoint file, a run directory (its best.pt) or published weights by name "
                             "(resnetlab weights list)")
