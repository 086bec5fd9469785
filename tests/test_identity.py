"""The identity lock: a code change on the numerical path cannot keep old cell keys silently."""
import shutil

import pytest

from qbench import identity
from qbench.errors import QBenchError


def test_the_lock_matches_the_code():
    """Fails when a file on the numerical path changed without its area's version being bumped
    (or the lock refreshed with the reason the change is numerically neutral): see qbench/identity.py."""
    assert identity.lock_problems() == []


def test_every_registered_quantization_method_has_an_area():
    from qbench.quant import methods

    for name in methods():
        assert f"quant.{name}" in identity.AREAS, name


@pytest.fixture
def package_copy(tmp_path, monkeypatch):
    """A copy of the qbench package with its lock, which the identity module is pointed at."""
    copy = tmp_path / "qbench"
    shutil.copytree(identity.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(identity, "PACKAGE", copy)
    monkeypatch.setattr(identity, "LOCK_FILE", copy / "identity.lock.json")
    assert identity.lock_problems() == []
    return copy


def test_a_code_change_without_a_bump_is_caught(package_copy):
    rtn = package_copy / "quant" / "rtn.py"
    rtn.write_text(rtn.read_text().replace("torch.round(w.float() / scale)", "torch.floor(w.float() / scale)"))
    problems = identity.lock_problems()
    # rtn's grid is used by rtn, gptq and activation quantization: all three areas must move
    assert sorted(p.split("'")[1] for p in problems) == ["quant.activation", "quant.gptq", "quant.rtn"], problems
    assert all("did not" in p for p in problems)


def test_docstrings_and_comments_change_nothing(package_copy):
    adapter = package_copy / "eval" / "adapter.py"
    text = adapter.read_text()
    text = text.replace('"""A fast, exact lm-eval scorer', '"""A FAST, exact lm-eval scorer (reworded)', 1)
    adapter.write_text(text.replace("\nimport math\n", "\nimport math  # a new comment\n", 1))
    assert identity.lock_problems() == []


def test_renamed_and_new_files_cannot_drop_out(package_copy):
    (package_copy / "quant" / "newmethod.py").write_text("x = 1\n")
    assert any("quant/newmethod.py" in p and "no identity area" in p for p in identity.lock_problems())
    (package_copy / "quant" / "newmethod.py").unlink()
    (package_copy / "quant" / "calib.py").rename(package_copy / "quant" / "calibration.py")
    with pytest.raises(QBenchError, match="quant/calib.py, which does not exist"):
        identity.lock_problems()


def test_bump_then_refresh_records_why(package_copy, monkeypatch):
    hqq = package_copy / "quant" / "hqq.py"
    hqq.write_text(hqq.read_text().replace("del_orig=True", "del_orig=False"))
    monkeypatch.setitem(identity.AREAS, "quant.hqq", identity.Area("2", identity.AREAS["quant.hqq"].files, ""))
    assert any("version 1 -> 2: refresh the lock" in p for p in identity.lock_problems())
    with pytest.raises(QBenchError, match="needs --reason"):
        identity.refresh(" ")
    assert identity.refresh("hqq: keep the original layer") == ["quant.hqq: version 1 -> 2"]
    assert identity.lock_problems() == []
    assert identity.read_lock()["history"][-1]["reason"] == "hqq: keep the original layer"
