"""--batch-size auto (harness.evaluation.batch_size): the fastest size on a cell's first batches, every
request computed once, in order, whatever is chosen; the choice recorded in metrics.json."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from harness.evaluation.batch_size import parse_batch_size, run_auto
from harness.errors import HarnessError
from harness.evaluation.runner import CellSpec, Runner
from harness.evaluation.validate import check_sweep_flags
from harness.registry import get_model_class, get_task_class
import models  # noqa: F401
import tasks  # noqa: F401


def test_parse_batch_size():
    assert parse_batch_size("auto") == "auto" and parse_batch_size("AUTO ") == "auto"
    assert parse_batch_size("4") == 4 and parse_batch_size("0") == 0  # the range: check_sweep_flags
    with pytest.raises(argparse.ArgumentTypeError, match="integer >= 1 or auto"):
        parse_batch_size("fast")
    check_sweep_flags([0], [0], None, "auto")
    for bad in (0, -2, "fast", True):
        with pytest.raises(HarnessError, match=f"--batch-size {bad}: must be an integer >= 1 or auto"):
            check_sweep_flags([0], [0], None, bad)


class Timed:
    """A model call whose time is ``overhead + per_item * size ** power`` (slept): power 1 rewards
    large batches (fixed overhead amortised), power 2 punishes them (as a dense attention mask does)."""

    def __init__(self, overhead: float, per_item: float, power: int, oom_from: int | None = None):
        self.overhead, self.per_item, self.power, self.oom_from = overhead, per_item, power, oom_from
        self.done: list[int] = []
        self.sizes: list[int] = []

    def __call__(self, batch: list[int]) -> None:
        if self.oom_from is not None and len(batch) >= self.oom_from:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        time.sleep(self.overhead + self.per_item * len(batch) ** self.power)
        self.done.extend(batch)
        self.sizes.append(len(batch))


@pytest.mark.parametrize("power, expect", [(1, lambda c: c >= 8), (2, lambda c: c == 1)])
def test_auto_picks_the_fastest_and_computes_everything_once(power, expect):
    requests = list(range(60))
    call = Timed(overhead=0.02, per_item=0.002, power=1) if power == 1 else Timed(overhead=0.002, per_item=0.01, power=2)
    choice = run_auto(requests, call, cost=lambda r: 10)
    assert call.done == requests  # each once, in order
    assert expect(choice["chosen"]), choice
    assert set(call.sizes[-2:]) <= {choice["chosen"], *range(1, choice["chosen"])}  # the rest: the chosen size
    assert str(choice["chosen"]) in choice["seconds_per_1k_prompt_chars"]


def test_auto_never_picks_a_size_that_ran_out_of_memory():
    requests = list(range(40))
    call = Timed(overhead=0.02, per_item=0.001, power=1, oom_from=4)
    choice = run_auto(requests, call, cost=lambda r: 10)
    assert call.done == requests and choice["chosen"] == 2 and 4 in choice["tried"]
    with pytest.raises(RuntimeError, match="out of memory"):  # batch 1 itself does not fit: said, not hidden
        run_auto(list(range(5)), Timed(0, 0, 1, oom_from=1), cost=lambda r: 1)


def test_auto_on_a_small_cell_and_an_empty_one():
    call = Timed(0, 0, 1)
    assert run_auto([1], call, cost=lambda r: 1)["chosen"] == 1 and call.done == [1]
    assert run_auto([], call, cost=lambda r: 1)["chosen"] == 1


def test_runner_auto_gives_the_same_predictions_and_records_the_choice(tmp_path):
    model = get_model_class("demo-majority")()
    task = get_task_class("easyvqa")(None, {})
    outs = {}
    for b in (8, "auto"):
        res = Runner(model, tmp_path / str(b), progress=False).run_cell(task, CellSpec(shots=4, seed=0, limit=40,
                                                                                        batch_size=b))
        outs[b] = [json.loads(line) for line in
                   next((tmp_path / str(b)).rglob("predictions.jsonl")).read_text().splitlines()]
        assert ("batch_size" in res) == (b == "auto")
    assert outs[8] == outs["auto"]
    metrics = json.loads(next((tmp_path / "auto").rglob("metrics.json")).read_text())
    assert metrics["batch_size"]["chosen"] in (1, 2, 4, 8, 16, 32, 64)
