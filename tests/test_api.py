"""The Python API: harness.evaluate on a name and on an in-memory model (no save/reload)."""

from __future__ import annotations

import json

import pytest

import harness
from harness.errors import HarnessError
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

GRID = dict(tasks="easyvqa", shots=[0, 2], seeds=[0, 1], limit=6)


def _predictions(root, label):
    out = {}
    for f in sorted((root / label).rglob("predictions.jsonl")):
        out[f.parent.relative_to(root / label).as_posix()] = [
            (r["query_id"], r["demo_ids"], r["prediction"], r["score"]) for r in map(json.loads, f.read_text().splitlines())]
    return out


def test_in_memory_flamingo_equals_the_cli_on_its_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    from models.flamingo.adapter import BUNDLED_CHECKPOINT, Flamingo
    from models.flamingo.model import FlamingoModel

    module = FlamingoModel.load(BUNDLED_CHECKPOINT)
    module.train()  # as a training loop holds it: the adapter must evaluate it in eval mode
    adapter = Flamingo.from_module(module)
    assert not module.training
    assert adapter.fingerprint.startswith("flamingo-state-")
    df = harness.evaluate(adapter, output=tmp_path / "api", **GRID)

    run_cli("run", "--model", "flamingo", "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0", "1",
            "--limit", "6", "--output", str(tmp_path / "cli"), "-q")
    cli = harness.reporting.report.load_results([tmp_path / "cli"])

    # the same cells, the same numbers, the same predictions
    key = ["task", "metric", "shots", "seed"]
    a = df.sort_values(key)[key + ["value", "n"]].reset_index(drop=True)
    c = cli.sort_values(key)[key + ["value", "n"]].reset_index(drop=True)
    assert len(a) == 4 * len(set(a["metric"])) and a.equals(c)
    assert _predictions(tmp_path / "api", "flamingo@memory") == _predictions(tmp_path / "cli", "flamingo")
    # the same folder layout as the CLI: summary.json and one metrics.json per cell
    assert (tmp_path / "api" / "flamingo@memory" / "summary.json").is_file()
    assert sorted(p.parent.name for p in (tmp_path / "api").rglob("metrics.json")) == \
        sorted(p.parent.name for p in (tmp_path / "cli").rglob("metrics.json"))
    cfg = json.loads(next((tmp_path / "api").rglob("metrics.json")).read_text())["config"]["model"]
    assert cfg["fingerprint"] == adapter.fingerprint and cfg["options"]["path"] == "in-memory"


def test_state_digest_is_the_weights_identity(tmp_path):
    import torch

    from models.flamingo.adapter import BUNDLED_CHECKPOINT, Flamingo
    from models.flamingo.model import FlamingoModel

    module = FlamingoModel.load(BUNDLED_CHECKPOINT)
    first = Flamingo.from_module(module).fingerprint
    assert Flamingo.from_module(FlamingoModel.load(BUNDLED_CHECKPOINT)).fingerprint == first
    with torch.no_grad():
        next(module.parameters()).view(-1)[0] += 1e-3
    assert Flamingo.from_module(module).fingerprint != first


def test_api_by_name_resumes_and_returns_only_its_cells(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    df = harness.evaluate("demo-majority", tasks="easyvqa", shots=[2], seeds=[0], limit=5, output=tmp_path)
    assert set(df["label"]) == {"demo-majority"} and set(df["shots"]) == {2} and (df["n"] == 5).all()
    mtime = next(tmp_path.rglob("metrics.json")).stat().st_mtime_ns
    again = harness.evaluate("demo-majority", tasks="easyvqa", shots=[2], seeds=[0], limit=5, output=tmp_path)
    assert again["value"].tolist() == df["value"].tolist()
    assert next(tmp_path.rglob("metrics.json")).stat().st_mtime_ns == mtime  # skipped, not recomputed
    other = harness.evaluate("demo-majority", tasks="easyvqa", shots=[0], seeds=[0], limit=5, output=tmp_path)
    assert set(other["shots"]) == {0}


@pytest.mark.parametrize("kwargs, message", [
    (dict(model="nope"), "nope"),
    (dict(model="demo-majority", tasks="nosuchtask"), "nosuchtask"),
    (dict(model="demo-majority", shots=[0, 0]), "shots"),
    (dict(model="demo-majority", model_args={"x": 1}), "x"),
    (dict(model=3), "registered name"),
    (dict(model="demo-majority", log_to="comet"), "comet"),
])
def test_bad_input_is_one_clear_error(tmp_path, kwargs, message):
    with pytest.raises(HarnessError, match=message):
        harness.evaluate(output=tmp_path, limit=3, **{"seeds": [0], **kwargs})
    assert not any(tmp_path.rglob("metrics.json"))


def test_in_memory_hf_model_equals_hf_by_path(tmp_path, monkeypatch):
    """A transformers model and its processor in memory (as a Trainer holds them), through the
    training helper's adapter (HF.from_objects): the same predictions as `hf` on the saved folder."""
    import sys

    from transformers import AutoModelForImageTextToText, AutoProcessor

    from tests.conftest import ROOT

    sys.path.insert(0, str(ROOT / "tests"))
    from hf_tiny import build_tiny_hf
    from harness.training import evaluate_step

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    path = build_tiny_hf("smolvlm", tmp_path / "smolvlm")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)
    image_processor = processor.image_processor
    model.train()
    grid = dict(tasks="easyvqa", shots=[0, 2], seeds=[0], limit=3)
    df = evaluate_step(model, 3, tmp_path / "mem", processor=processor, label="tiny", **grid)
    assert model.training and processor.image_processor is image_processor  # handed back as given
    by_path = harness.evaluate("hf", model_args={"path": str(path)}, label="tiny", output=tmp_path / "disk", **grid)
    key = ["task", "metric", "shots", "seed"]
    assert df.sort_values(key)[key + ["value", "n"]].reset_index(drop=True).equals(
        by_path.sort_values(key)[key + ["value", "n"]].reset_index(drop=True))
    assert _predictions(tmp_path / "mem" / "step-3", "tiny") == _predictions(tmp_path / "disk", "tiny")
    cfg = json.loads(next((tmp_path / "mem").rglob("metrics.json")).read_text())["config"]["model"]
    assert cfg["fingerprint"].startswith("hf-smolvlm-state-") and cfg["options"]["path"] == "in-memory"
    with pytest.raises(HarnessError, match="processor"):
        evaluate_step(model, 4, tmp_path / "mem", **grid)
