"""Sweeps over more than two arms: three models trained here (the debug preset: softmax, softpick,
softmax1 from one seed and data order) swept with a weight recipe and a KV-cache point, and the
tables covering every arm with paired statistics from the per-item sidecars."""
import json

import pytest

from qbench.cli import main
from qbench.sweep.store import Store
from qbench.train import train as T

from conftest import write_sweep
from train_fixtures import make_corpus, spec

pytestmark = pytest.mark.usefixtures("use_data_dir")
KINDS = ("softmax", "softpick", "softmax1")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("arms")
    (root / "corpus").mkdir()
    corpus = make_corpus(root / "corpus")
    summaries = {kind: T.train_model(spec(corpus, root / kind, kind))[1] for kind in KINDS}
    assert len({s["init_hash"] for s in summaries.values()}) == 1            # one init, three attentions
    assert len({s["data_order_hash"] for s in summaries.values()}) == 1
    return root


def test_three_trained_arms(trained, tmp_path, capsys):
    arms = [{"name": k, "path": str(trained / k)} for k in KINDS]
    path = write_sweep(tmp_path, None, [{"recipe": "rtn", "bits": [4]}, {"recipe": "kv", "kv_bits": [4]}],
                       arms=arms, baseline="softmax", limit=4)
    results = tmp_path / "results"
    assert main(["sweep", str(path), "--results", str(results), "--no-progress"]) == 0
    assert "9 cells: 9 done" in capsys.readouterr().out
    records = Store(results).records().values()
    assert {(r["model"]["arm"], r["model"]["attention"]) for r in records} == {(k, k) for k in KINDS}
    assert all(r["items"] for r in records)                                   # every cell has its sidecar
    backends = {r["model"]["arm"]: set(r["attention_backends"]) for r in records if r["label"] == "KV4"}
    # K and V are quantized before attention: softmax keeps SDPA, the others run the reference on the CPU
    assert backends == {"softmax": {"softmax:sdpa"}, "softpick": {"softpick:reference"},
                        "softmax1": {"softmax1:reference"}}
    assert main(["table", str(results)]) == 0 and main(["plot", str(results)]) == 0
    deltas = (results / "tables" / "t" / "deltas.md").read_text()
    for arm in ("softpick", "softmax1"):   # each arm against the baseline, and its drops against the baseline's
        assert f"{arm} − softmax" in deltas or f"{arm} - softmax" in deltas, deltas[:2000]
    manifest = json.loads((results / "sweeps" / "t.json").read_text())
    assert [a["name"] for a in manifest["arms"]] == list(KINDS) and manifest["baseline"] == "softmax"
