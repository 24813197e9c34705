"""--log-to wandb,mlflow,tensorboard: each library for real, offline, its output read back."""

from __future__ import annotations

import json
import struct

import pytest

import harness
from harness.cli import main
from harness.errors import HarnessError

RUN = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "2", "--seeds", "0", "1",
       "--limit", "5", "-q"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline, nothing written outside tmp_path, no tracking server configured."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def _cells(out, label):
    """(task, shots, seed) -> accuracy of every cell under out/label."""
    return {(m["config"]["task"]["name"], m["config"]["shots"], m["config"]["seed"]): m["metrics"]["accuracy"]
            for m in (json.loads(f.read_text()) for f in (out / label).rglob("metrics.json"))}


def _expected(cells, label):
    """The metric names and values every logger writes for these cells."""
    out = {}
    for (task, shots, seed), v in cells.items():
        out[f"eval/{label}/{task}/{shots}shot/accuracy/seed{seed}"] = v
    for task, shots in {(t, s) for t, s, _ in cells}:
        vals = [v for (t, s, _), v in cells.items() if (t, s) == (task, shots)]
        out[f"eval/{label}/{task}/{shots}shot/accuracy/mean"] = sum(vals) / len(vals)
    return out


def wandb_records(path):
    """The records of an offline W&B run file (run-*.wandb): a 7-byte header (':W&B', magic 0xBEE1,
    version), then LevelDB-log blocks of 32 KiB holding [crc32c, length, type] + data chunks (wandb's
    datastore format)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 2):  # full, first
            buf = chunk
        else:  # middle, last
            buf += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            yield record


def test_run_logs_every_cell_with_its_step_to_wandb_mlflow_and_tensorboard(offline, capsys):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = offline / "res"
    assert main([*RUN, "--output", str(out), "--log-to", "wandb,mlflow,tensorboard", "--log-step", "7"]) == 0
    expected = _expected(_cells(out, "demo-majority"), "demo-majority")
    assert len(expected) == 6 and len(set(expected.values())) > 1

    # W&B: the offline run file holds one history row at step 7 with every value, and the config
    (run_file,) = (out / "wandb").glob("offline-run-*/run-*.wandb")
    records = list(wandb_records(run_file))
    history = [r.history for r in records if r.WhichOneof("record_type") == "history"]
    assert [h.step.num for h in history] == [7]
    items = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in history[0].item}
    logged = {k: v for k, v in items.items() if not k.startswith("_")}  # _step, _runtime, _timestamp
    assert logged.keys() == expected.keys()
    assert all(logged[k] == pytest.approx(v) for k, v in expected.items())
    config = [json.loads(i.value_json) for r in records if r.WhichOneof("record_type") == "config"
              for i in r.config.update if (i.key or "/".join(i.nested_key)) == "harness"]
    assert config and config[-1]["label"] == "demo-majority" and config[-1]["step"] == 7
    assert config[-1]["model"]["name"] == "demo-majority" and config[-1]["shots"] == [0, 2]

    # MLflow: the local file store, read through its client
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.run_name == "demo-majority" and run.info.status == "FINISHED"
    for key, value in expected.items():
        (point,) = client.get_metric_history(run.info.run_id, key)
        assert point.step == 7 and point.value == pytest.approx(value)
    artifact = client.download_artifacts(run.info.run_id, "harness/step-7.json", str(offline / "dl"))
    assert json.loads(open(artifact).read())["tasks"] == ["easyvqa"]

    # TensorBoard: event files read back
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(expected)
    for key, value in expected.items():
        (event,) = acc.Scalars(key)
        assert event.step == 7 and event.value == pytest.approx(value)
    assert "harness/config/text_summary" in acc.Tags()["tensors"]


def test_api_joins_an_active_mlflow_run_and_leaves_it_open(offline, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = (offline / "store").resolve().as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    mlflow.set_tracking_uri(uri)
    try:
        with mlflow.start_run(run_name="my-training") as mine:
            for step in (10, 20):
                harness.evaluate("demo-majority", tasks="easyvqa", shots=[0], seeds=[0], limit=4 + step // 10,
                                 output=offline / f"step-{step}", log_to="mlflow", step=step)
                assert mlflow.active_run().info.run_id == mine.info.run_id  # still the caller's, still open
        client = MlflowClient(tracking_uri=uri)
        history = client.get_metric_history(mine.info.run_id, "eval/demo-majority/easyvqa/0shot/accuracy/mean")
        assert [p.step for p in history] == [10, 20]
        assert len(client.search_runs([mine.info.experiment_id])) == 1  # no run of its own
        assert not (offline / "step-10" / "mlruns").exists()  # the caller's store, not a local one
    finally:
        mlflow.set_tracking_uri("")


def test_log_to_refusals_come_before_any_work(offline, capsys):
    out = offline / "res"
    assert main([*RUN, "--output", str(out), "--log-to", "wandb,neptune"]) == 2
    assert "neptune" in capsys.readouterr().err and not out.exists()
    assert main([*RUN, "--output", str(out), "--log-to", "tensorboard,tensorboard"]) == 2
    assert "twice" in capsys.readouterr().err
    assert main([*RUN, "--output", str(out), "--log-to", "tensorboard", "--shard", "1/2"]) == 2
    assert "--shard" in capsys.readouterr().err and not out.exists()
    with pytest.raises(HarnessError, match="comet"):
        harness.evaluate("demo-majority", tasks="easyvqa", shots=[0], seeds=[0], limit=3, output=out, log_to="comet")
    assert not out.exists()


def test_wandb_joins_an_active_run_with_the_step_as_harness_step(offline):
    import wandb

    run = wandb.init(project="mine", dir=str(offline), name="my-training")
    try:
        for i in range(5):  # the training loop's own logging advances the run's step past 2
            run.log({"train/loss": 1.0 / (i + 1)})
        harness.evaluate("demo-majority", tasks="easyvqa", shots=[0], seeds=[0], limit=4, output=offline / "step-2",
                         log_to="wandb", step=2)
        assert wandb.run is run  # the caller's run, left open
    finally:
        run.finish()
    (run_file,) = offline.glob("wandb/offline-run-*/run-*.wandb")
    rows = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
            for r in wandb_records(run_file) if r.WhichOneof("record_type") == "history"]
    evals = [row for row in rows if "eval/demo-majority/easyvqa/0shot/accuracy/mean" in row]
    assert len(evals) == 1 and evals[0]["harness/step"] == 2  # kept, not dropped as an old step
    assert len([row for row in rows if "train/loss" in row]) == 5
    assert not (offline / "step-2" / "wandb").exists()  # no run of its own
