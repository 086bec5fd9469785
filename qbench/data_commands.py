"""`qbench data ...`: build the training corpus (train/) and prepare the offline task data (eval/)."""


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build the corpus or prepare offline task data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    from .eval.data import register_data_commands as register_eval_data
    from .train.commands import register_data_commands as register_corpus

    register_corpus(data_sub)
    register_eval_data(data_sub)
