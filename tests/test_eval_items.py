"""Per-item results (evaluate(..., return_items=True)) and reuse of lm-eval's task objects."""
import json
import math
import os
import random

import pytest

from qbench.eval.items import ItemsError, aggregate, check_items

# one task per request type: multiple choice (one context, and WinoGrande's partial scoring with one
# context per choice), loglikelihood (LAMBADA), rolling perplexity (held-out documents)
TASKS = ["qb_arc_easy", "qb_winogrande", "qb_lambada_openai", "qb_heldout_ppl"]


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    from test_eval_tasks import prepare_once

    return prepare_once(tmp_path_factory)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tokenizer):
    from conftest import save_tiny

    from qbench.model import load_checkpoint

    ckpt = load_checkpoint(save_tiny(tmp_path_factory.mktemp("tiny") / "m", "softmax", tokenizer))
    return ckpt.model, ckpt.tokenizer


@pytest.fixture(scope="module")
def scored(tasks_dir, tiny):
    from qbench.eval import evaluate

    model, tok = tiny
    return evaluate(model, tok, TASKS, limit=6, tasks_dir=tasks_dir, bootstrap_iters=0, return_items=True)


def test_items_aggregate_to_the_stored_metrics(scored):
    metrics, details, items = scored
    assert set(items) == set(TASKS)
    expected = {"qb_arc_easy": {"acc": "mean", "acc_norm": "mean"}, "qb_winogrande": {"acc": "mean"},
                "qb_lambada_openai": {"acc": "mean", "perplexity": "perplexity"},
                "qb_heldout_ppl": {"word_perplexity": "weighted_perplexity", "byte_perplexity": "weighted_perplexity",
                                   "bits_per_byte": "bits_per_byte"}}
    for task, entry in items.items():
        assert entry["doc_id"] == list(range(len(entry["doc_id"])))
        assert len(entry["doc_id"]) == details["n_samples"][task]["effective"]
        assert {m: e["aggregation"] for m, e in entry["metrics"].items()} == expected[task]
        for metric, m in entry["metrics"].items():
            assert aggregate(m) == metrics[task][metric], (task, metric)   # exactly: same values, same order
    # what the values are: 0/1 correctness, LAMBADA log-likelihoods, [ll, words] / [ll, bytes] pairs
    assert set(items["qb_arc_easy"]["metrics"]["acc"]["values"]) <= {0.0, 1.0}
    assert all(v < 0 for v in items["qb_lambada_openai"]["metrics"]["perplexity"]["values"])
    lam = items["qb_lambada_openai"]["metrics"]["perplexity"]["values"]
    assert metrics["qb_lambada_openai"]["perplexity"] == pytest.approx(math.exp(-sum(lam) / len(lam)), rel=1e-12)
    from test_eval_tasks import HELDOUT_DOCS

    words = [w for _, w in items["qb_heldout_ppl"]["metrics"]["word_perplexity"]["values"]]
    nbytes = [b for _, b in items["qb_heldout_ppl"]["metrics"]["bits_per_byte"]["values"]]
    assert nbytes == [len(d.encode("utf-8")) for d in HELDOUT_DOCS] and all(w > 1 for w in words)


def test_items_are_lm_evals_logged_samples(tasks_dir, tiny):
    """The recorded process_results values are the ones lm-eval's own log_samples reports."""
    from qbench.eval.runner import run_lm_eval

    model, tok = tiny
    run = run_lm_eval(model, tok, TASKS, 5, bootstrap_iters=0, tasks_dir=tasks_dir, items=True, log_samples=True)
    for task, rows in run["results"]["samples"].items():
        rows = sorted(rows, key=lambda r: r["doc_id"])
        entry = run["items"][task]
        assert entry["doc_id"] == [r["doc_id"] for r in rows]
        assert set(entry["metrics"]) == set(rows[0]["metrics"])
        for metric, m in entry["metrics"].items():
            assert m["values"] == [list(r[metric]) if isinstance(r[metric], tuple) else r[metric] for r in rows]


def test_items_survive_json(scored):
    """The sidecar is JSON: the values come back as the same floats, so the aggregates are unchanged."""
    metrics, _, items = scored
    back = json.loads(json.dumps(items))
    check_items(back)
    for task, entry in back.items():
        for metric, m in entry["metrics"].items():
            assert aggregate(m) == metrics[task][metric]


def test_aggregate_is_lm_evals_aggregation():
    from lm_eval.api.registry import get_aggregation

    rng = random.Random(0)
    acc = [float(rng.random() < 0.3) for _ in range(101)]
    ll = [-rng.random() * 20 for _ in range(57)]
    pairs = [[-rng.random() * 900, rng.randint(1, 400)] for _ in range(33)]
    for name, values in [("mean", acc), ("perplexity", ll), ("weighted_perplexity", pairs), ("bits_per_byte", pairs)]:
        assert aggregate({"aggregation": name, "values": values}) == get_aggregation(name)([tuple(v) if isinstance(v, list)
                                                                                            else v for v in values])


@pytest.mark.parametrize("bad,match", [
    ({"t": {"doc_id": [0, 1], "metrics": {"acc": {"aggregation": "mean", "values": [1.0]}}}}, "1 values for 2"),
    ({"t": {"doc_id": [0], "metrics": {"acc": {"aggregation": "median", "values": [1.0]}}}}, "unknown aggregation"),
    ({"t": {"doc_id": [0], "metrics": {"w": {"aggregation": "weighted_perplexity", "values": [-3.0]}}}}, "pairs"),
    ({"t": {"metrics": {}}}, "doc_id list"),
    ([], "mapping of tasks"),
])
def test_malformed_items_are_named(bad, match):
    with pytest.raises(ItemsError, match=match):
        check_items(bad)


def test_reused_task_objects_give_the_numbers_of_fresh_ones(tasks_dir, tiny):
    """lm-eval task objects carry state (dataset, last run's instances): reused across evaluate()
    calls (the default) they give exactly the metrics and items of freshly built ones, also after a
    run with another limit; and they are really reused."""
    from qbench.eval import evaluate
    from qbench.eval.runner import load_tasks

    model, tok = tiny
    tasks = TASKS + ["qb_hellaswag"]   # HellaSwag: a task with process_docs

    def run(limit, reuse):
        return evaluate(model, tok, tasks, limit=limit, tasks_dir=tasks_dir, bootstrap_iters=10, return_items=True,
                        reuse_tasks=reuse)

    fresh = {lim: run(lim, False) for lim in (5, 3)}
    reused = [run(5, True), run(3, True), run(5, True)]
    for got, lim in zip(reused, (5, 3, 5)):
        assert got[0] == fresh[lim][0] and got[2] == fresh[lim][2]
    assert reused[1][1]["timing"]["tasks"] < fresh[3][1]["timing"]["tasks"]
    from qbench.eval.runner import hub_mode

    with hub_mode(False):
        a, b = load_tasks(tasks, False, tasks_dir), load_tasks(tasks, False, tasks_dir)
    assert all(a[n] is b[n] for n in tasks)


@pytest.mark.parametrize("n,iters", [(5153, 1000), (37, 2500), (1, 1000), (300, 100)])
def test_bootstrap_stderr_is_lm_evals(monkeypatch, n, iters):
    """evaluate()'s in-process bootstrap (vectorized for perplexity) gives lm-eval's pool bootstrap's
    stderr exactly; other metrics run lm-eval's own chunk loop, also exactly."""
    from lm_eval.api import metrics as lm_metrics

    from qbench.eval import bootstrap

    original = bootstrap.lm_eval_bootstrap_stderr()
    assert original is not bootstrap.bootstrap_stderr
    monkeypatch.delenv("DISABLE_MULTIPROC", raising=False)
    rng = random.Random(n)
    xs = [-rng.random() * 12 for _ in range(n)]
    assert bootstrap._fast_perplexity_ok()
    assert bootstrap.bootstrap_stderr(lm_metrics.perplexity, xs, iters) == original(lm_metrics.perplexity, xs, iters)
    if n == 37:
        assert bootstrap.bootstrap_stderr(lm_metrics.median, xs, iters) == original(lm_metrics.median, xs, iters)


def test_batch_check_counts_changes_between_batch_settings(tasks_dir, tiny):
    """`qbench bench eval --batch-check`'s comparison: fp32 scores do not depend on batching (within
    float rounding), so no answer changes; a planted change is counted."""
    import copy

    from qbench.eval.bench import batch_check_report, checked_run

    model, tok = tiny
    tasks = ["qb_arc_easy", "qb_lambada_openai", "qb_heldout_ppl"]
    runs = [checked_run(model, tok, tasks, 4, mbt, bs, tasks_dir=tasks_dir) for mbt, bs in ((4096, None), (64, 1))]
    report = batch_check_report(*runs)
    assert runs[0]["lm"].stats["forwards"] < runs[1]["lm"].stats["forwards"]
    for name, r in report["tasks"].items():
        assert r["items"] == (3 if name == "qb_heldout_ppl" else 4)   # the held-out file has 3 documents
        assert r["answer_changes"] == (None if name == "qb_heldout_ppl" else 0)
        assert r["max_abs_loglikelihood_change"] < 1e-3 and r["max_rel_loglikelihood_change"] < 1e-5
    assert report["max_metric_difference"] < 1e-5
    # plant a changed answer in the second run: doc 0 of ARC-Easy now prefers its least likely choice
    planted = copy.deepcopy(runs[1]["answers"])
    answer, lls = planted["qb_arc_easy"][0]
    worst = min(range(len(lls)), key=lls.__getitem__)
    lls[worst] = max(lls) + 1.0
    planted["qb_arc_easy"][0] = (worst, lls)
    changed = batch_check_report(runs[0], dict(runs[1], answers=planted))
    assert changed["tasks"]["qb_arc_easy"]["answer_changes"] == 1
    assert changed["tasks"]["qb_arc_easy"]["max_abs_loglikelihood_change"] > 1.0
