"""`qbench data ...`: build the training corpus (train/) and prepare the offline task data (eval/)."""


def register(subparsers) -> None:
    data = subparsers.add_parser("data", help="build the corpus, prepare offline task data or fetch real models")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    from .eval.data import register_data_commands as register_eval_data
    from .model.commands import register_data_models
    from .train.commands import register_data_commands as register_corpus

    register_corpus(data_sub)
    register_eval_data(data_sub)
    register_data_models(data_sub)
