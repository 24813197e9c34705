"""Evaluating during training: the Trainer callback and the plain function for custom loops."""

from __future__ import annotations

import json

import pytest

from harness.errors import HarnessError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EVAL = dict(tasks="easyvqa", shots=[0, 2], seeds=[0], limit=4)


def _text_dataset(module, n: int = 16):
    """Fixed-length token rows of easy-VQA-like text (no images): enough to move the weights."""
    import torch

    texts = [f"Question: What color is the shape? Short answer: {c}" for c in ("red", "blue", "green", "yellow")]
    rows = [module.encode_text(t) for t in texts]
    width = min(len(r) for r in rows)
    return [{"input_ids": torch.tensor(rows[i % len(rows)][:width])} for i in range(n)]


def _trainer(module, tmp_path, callback, steps: int):
    import torch
    from transformers import Trainer, TrainingArguments

    class LMTrainer(Trainer):  # a custom model's loss, as a user's Trainer subclass computes it
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            ids = inputs["input_ids"]
            logits = model(ids, None).logits[:, :-1]
            return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    args = TrainingArguments(output_dir=str(tmp_path / "trainer"), max_steps=steps, per_device_train_batch_size=4,
                             learning_rate=5e-3, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                             disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=False, seed=0)
    return LMTrainer(model=module, args=args, train_dataset=_text_dataset(module), callbacks=[callback])


def _metrics(root, step):
    files = sorted((root / f"step-{step}").rglob("metrics.json"))
    return {(m["config"]["task"]["name"], m["config"]["shots"]): m for m in (json.loads(f.read_text()) for f in files)}


def test_trainer_callback_evaluates_and_logs_at_the_right_steps(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from harness.training import HarnessCallback
    from models.flamingo.adapter import BUNDLED_CHECKPOINT
    from models.flamingo.model import FlamingoModel

    module = FlamingoModel.load(BUNDLED_CHECKPOINT)
    out = tmp_path / "evals"
    callback = HarnessCallback(every=2, output=out, log_to="tensorboard", **EVAL)
    trainer = _trainer(module, tmp_path, callback, steps=5)
    modes = []
    callback_eval = callback._evaluate

    def spy(args, state, model, processing_class=None):  # the mode the model is handed back in
        callback_eval(args, state, model, processing_class)
        modes.append(model.training)

    callback._evaluate = spy
    trainer.train()

    # every 2 steps, and at the end of training (step 5)
    assert callback.evaluated == [2, 4, 5]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == ["step-2", "step-4", "step-5"]
    assert all(modes)  # training resumed in train mode after each evaluation
    cells = {s: _metrics(out, s) for s in (2, 4, 5)}
    assert all(set(c) == {("easyvqa", 0), ("easyvqa", 2)} for c in cells.values())
    # each evaluation saw the model as it was at its step: three different weights
    prints = {s: next(iter(c.values()))["config"]["model"]["fingerprint"] for s, c in cells.items()}
    assert len(set(prints.values())) == 3 and all(p.startswith("flamingo-state-") for p in prints.values())
    # the same fixed subset at every step
    ids = {s: [json.loads(line)["query_id"] for line in
               (out / f"step-{s}" / "flamingo" / "easyvqa" / "0shot_seed0" / "predictions.jsonl").read_text().splitlines()]
           for s in (2, 4, 5)}
    assert ids[2] == ids[4] == ids[5] and len(ids[2]) == 4

    # the Trainer's log history holds them with the step
    logged = {e["step"]: e for e in trainer.state.log_history if "eval/easyvqa/0shot/accuracy" in e}
    assert sorted(logged) == [2, 4, 5]
    for s in (2, 4, 5):
        assert logged[s]["eval/easyvqa/2shot/accuracy"] == pytest.approx(cells[s][("easyvqa", 2)]["metrics"]["accuracy"])

    # TensorBoard event files, read back: one scalar per step with the cell's value
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tag = "eval/flamingo/easyvqa/0shot/accuracy/mean"
    assert tag in acc.Tags()["scalars"]
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [2, 4, 5]
    for e in events:
        assert e.value == pytest.approx(cells[e.step][("easyvqa", 0)]["metrics"]["accuracy"])


def test_evaluate_step_in_a_custom_loop(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    import torch

    from harness.training import evaluate_step
    from models.flamingo.adapter import BUNDLED_CHECKPOINT
    from models.flamingo.model import FlamingoModel

    module = FlamingoModel.load(BUNDLED_CHECKPOINT)
    module.train()
    data = _text_dataset(module, 4)
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.5)
    frames = []
    for step in range(1, 4):
        ids = torch.stack([d["input_ids"] for d in data])
        logits = module(ids, None).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 2 == 1:
            frames.append(evaluate_step(module, step, tmp_path, **EVAL))
            assert module.training  # handed back in train mode
    assert [sorted(set(f["step"])) for f in frames] == [[1], [3]]
    assert (tmp_path / "step-1").is_dir() and (tmp_path / "step-3").is_dir() and not (tmp_path / "step-2").exists()
    # an evaluation of the same weights again resumes (skips) instead of recomputing
    mtime = next((tmp_path / "step-3").rglob("metrics.json")).stat().st_mtime_ns
    module.eval()
    again = evaluate_step(module, 3, tmp_path, **EVAL)
    assert again["value"].tolist() == frames[1]["value"].tolist()
    assert next((tmp_path / "step-3").rglob("metrics.json")).stat().st_mtime_ns == mtime
    assert not module.training  # left in the mode it was given in


@pytest.mark.parametrize("kwargs, message", [
    (dict(every=0), "every"),
    (dict(every=2, log_to="comet"), "comet"),
])
def test_callback_bad_options_fail_at_construction(kwargs, message):
    from harness.training import HarnessCallback

    with pytest.raises(HarnessError, match=message):
        HarnessCallback(**kwargs)


def test_evaluate_step_refuses_what_it_cannot_evaluate(tmp_path):
    import torch

    from harness.training import evaluate_step

    with pytest.raises(HarnessError, match="Linear"):
        evaluate_step(torch.nn.Linear(2, 2), 1, tmp_path, **EVAL)
    with pytest.raises(HarnessError, match="step"):
        evaluate_step(torch.nn.Linear(2, 2), -1, tmp_path, **EVAL)
    assert not any(tmp_path.iterdir())
