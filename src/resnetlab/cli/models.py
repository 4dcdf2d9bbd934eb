HELP = "List the registered models."


def add_arguments(parser):
    parser.add_argument("--json", action="store_true")


def run(args):
    return 0
