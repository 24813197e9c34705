"""Shared fixtures: a tiny random IDEFICS and a tiny random OpenFlamingo saved to disk, and VQA
data in the official schemas."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(autouse=True, scope="session")
def _harness_cache(tmp_path_factory):
    """Caches between runs (split cache, digests) in a folder of this test session, not ~/.cache:
    tests never see another session's cache files (a test that needs its own sets HARNESS_CACHE)."""
    old = os.environ.get("HARNESS_CACHE")
    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("harness_cache"))
    yield
    if old is None:
        os.environ.pop("HARNESS_CACHE", None)
    else:
        os.environ["HARNESS_CACHE"] = old


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """Under ``pytest -n N`` (the test script runs two workers) each worker computes with one torch
    thread: N workers of two threads on two cores contend, which makes tiny models many times slower."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _builtins():
    """The tests are a composition root like the command line: the built-in tasks and models exist."""
    from harness import plugins

    plugins.load_builtins()


@contextlib.contextmanager
def scoped_registrations():
    """Plug-ins registered inside (tasks, models, suites, --include modules) are gone afterwards."""
    from harness import plugins, registry, suites

    plugins.load_builtins()
    tables = [registry._TASKS, registry._MODELS, suites._SUITES]
    saved_tables = [dict(t) for t in tables]
    saved_modules = set(sys.modules)
    try:
        yield
    finally:
        for table, saved in zip(tables, saved_tables):
            table.clear()
            table.update(saved)
        for name in set(sys.modules) - saved_modules:  # plug-in files: a later --include imports them afresh
            if name.startswith("harness_plugin_"):
                del sys.modules[name]


@pytest.fixture(autouse=True)
def _no_registration_leaks(_builtins):
    """Each test starts from the built-ins only, whatever an earlier test included."""
    with scoped_registrations():
        yield


IMPORT_TIME_VARS = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "HARNESS_FRAME_CACHE_")
CHILD_TIMEOUT = 1200  # seconds: a hung child fails the test instead of blocking CI


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, check: bool = True,
            threads: int | None = 1, process: bool | None = None):
    """Run the command line ``run_eval.py ...`` as a user would and return a ``CompletedProcess``.

    In this process by default (``harness.cli.main`` with its own stdout/stderr, working folder,
    environment and plug-in registrations, all put back afterwards): the fast tier. ``process=True``
    starts a real ``python run_eval.py`` instead, for what only a fresh process shows (the script
    itself, signals); ``None`` does that only when ``env`` sets a variable that libraries read at
    import (``PYTHONPATH``, ``HF_*``, ``HARNESS_FRAME_CACHE_*``). ``run`` gets ``--threads threads`` unless the args
    set it (None: the harness's own default)."""
    if args and args[0] == "run" and "--threads" not in args and threads is not None:
        args = (*args, "--threads", str(threads))
    if process is None:
        process = any(k == "PYTHONPATH" or k.startswith(IMPORT_TIME_VARS) for k in env or {})
    if process:
        # One torch thread, set by the flag rather than the environment: on a small shared machine thread
        # contention makes tiny models 100x slower.
        full_env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, "PYTHONPATH": str(ROOT),
                    "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        proc = subprocess.run([sys.executable, str(ROOT / "run_eval.py"), *args], cwd=cwd or ROOT, env=full_env,
                              capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    else:
        proc = _run_in_process(list(args), cwd=cwd, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"run_eval.py {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _run_in_process(args: list[str], cwd: Path | None, env: dict | None) -> subprocess.CompletedProcess:
    import contextlib
    import io
    import traceback

    from harness import cli

    saved_env = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_argv = sys.argv
    sys.argv = [str(ROOT / "run_eval.py"), *args]  # the program name printed in hints, as a real run has it
    out, err = io.StringIO(), io.StringIO()
    os.environ.update({"TOKENIZERS_PARALLELISM": "false", **(env or {})})
    os.chdir(cwd or ROOT)
    try:
        with scoped_registrations(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(args)
            except SystemExit as exc:  # argparse's usage errors
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            except Exception:  # what a real process would print before exiting with 1
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["run_eval.py", *args], code, out.getvalue(), err.getvalue())


#: a quick run on the bundled easy-VQA data, for bad-input cases to add one thing to
EASY = ["run", "--model", "demo-majority", "--tasks", "easyvqa", "--limit", "4", "-q"]


def cli_error(capsys, *args: str) -> str:
    """Run the CLI in this process, assert exit status 2 and one ``error:`` line without a traceback;
    return the line."""
    from harness.cli import main

    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def build_tiny_idefics(directory: Path, seed: int = 0) -> Path:
    """Save a tiny random-weight IDEFICS and its processor (locally trained tokenizer) to ``directory``.

    The cross-attention gates are opened (random init leaves them at 0, where images change nothing).
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (IdeficsConfig, IdeficsForVisionText2Text, IdeficsImageProcessorPil,
                              IdeficsProcessor, PreTrainedTokenizerFast)

    corpus = [
        "Question: what color is the shape? Answer: red green blue yellow gray teal black brown",
        "Question: is there a circle in the image? Answer: yes no rectangle triangle circle",
        "Output: a photo of a cat sitting on a bench next to a dog and a person",
        "Question: what is in the video? Answer: dog cat man car ball",
        "is an image with: 'meme text' written on it. Is it hateful? Answer: yes no",
        "why did the square move to the right because someone pushed it",
    ] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                     pad_token="<pad>", padding_side="left")
    hf_tok.add_special_tokens({"additional_special_tokens": ["<image>", "<fake_token_around_image>"]})
    torch.set_num_threads(1)  # tiny models: threads only contend
    torch.manual_seed(seed)
    config = IdeficsConfig(
        vocab_size=len(hf_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        cross_layer_interval=1, additional_vocab_size=0, bos_token_id=hf_tok.bos_token_id,
        eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
        vision_config=dict(embed_dim=32, image_size=30, patch_size=15, num_hidden_layers=1,
                           num_attention_heads=2, intermediate_size=37),
        perceiver_config=dict(use_resampler=True, resampler_n_latents=4, resampler_depth=1,
                              resampler_n_heads=2, resampler_head_dim=8),
    )
    model = IdeficsForVisionText2Text(config).eval()
    with torch.no_grad():
        for layer in model.model.gated_cross_attn_layers:
            layer.alpha_cross_attn.fill_(0.5)
            layer.alpha_dense.fill_(0.5)
    processor = IdeficsProcessor(image_processor=IdeficsImageProcessorPil(image_size=30), tokenizer=hf_tok)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_idefics_dir(tmp_path_factory) -> Path:
    return build_tiny_idefics(tmp_path_factory.mktemp("tiny_idefics"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module's tiny models: faster than two on a shared machine
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synthetic_openflamingo(tmp_path_factory):
    """A tiny random-weight OpenFlamingo written in the published layout (its ``--model-arg``
    options) and 14 random 32x32 images."""
    import numpy as np
    from PIL import Image as PILImage

    from harness.types import Image
    from models.openflamingo.synthetic import SyntheticConfig, write_synthetic

    root = tmp_path_factory.mktemp("synthetic_of")
    opts = write_synthetic(root / "model", SyntheticConfig(vision_width=64, lm_hidden=64, lm_layers=2,
                                                           perceiver_depth=1, cross_attn_every_n_layers=1))
    images = []
    for i in range(14):
        path = root / f"img{i}.png"
        PILImage.fromarray(np.random.RandomState(i).randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        images.append(Image(str(path)))
    return opts, images


def write_vqa_fixture(root: Path, task: str = "vqav2", n_train: int = 12, n_val: int = 6,
                      prefix_q: str = "v2_OpenEnded_mscoco", prefix_a: str = "v2_mscoco") -> Path:
    """VQA data in the exact official schema under ``root/task``, with real photos as COCO images."""
    import numpy as np
    from PIL import Image
    from skimage import data as skdata

    photos = [skdata.astronaut(), skdata.chelsea(), skdata.coffee(), skdata.rocket()]
    base = root / task
    answers_pool = [["yes"] * 10, ["no"] * 7 + ["yes"] * 3, ["2"] * 4 + ["two"] * 4 + ["3"] * 2,
                    ["red"] * 5 + ["dark red"] * 3 + ["maroon"] * 2]
    qid = 1000
    for split, n in (("train2014", n_train), ("val2014", n_val)):
        (base / split).mkdir(parents=True, exist_ok=True)
        questions, annotations = [], []
        for i in range(n):
            image_id = 100 + i if split == "train2014" else 500 + i
            img = Image.fromarray(np.asarray(photos[i % len(photos)])).convert("RGB").resize((48, 48))
            img.save(base / split / f"COCO_{split}_{image_id:012d}.jpg")
            answers = answers_pool[i % len(answers_pool)]
            questions.append({"image_id": image_id, "question": f"What is shown in picture {i}?", "question_id": qid})
            annotations.append({
                "question_id": qid, "image_id": image_id, "question_type": "what is",
                "answer_type": "yes/no" if answers[0] in ("yes", "no") else ("number" if answers[0].isdigit() else "other"),
                "multiple_choice_answer": max(set(answers), key=answers.count),
                "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(answers)],
            })
            qid += 1
        (base / f"{prefix_q}_{split}_questions.json").write_text(json.dumps(
            {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": split, "questions": questions}))
        # Annotations deliberately in another order than the questions: the join is by question_id.
        (base / f"{prefix_a}_{split}_annotations.json").write_text(json.dumps(
            {"info": {}, "data_type": "mscoco", "data_subtype": split, "annotations": annotations[::-1]}))
    return root


def write_my_vqa(data_dir: Path, shade: str | None = None) -> Path:
    """The data of the plug-in task examples/my_task.py under ``data_dir/my_vqa``: solid red, green
    and blue 32x32 images (9 train, 6 test), "What colour is the image?" answered by the colour
    three times, plus once as "<shade> <colour>" when ``shade`` is given."""
    from PIL import Image

    root = data_dir / "my_vqa"
    (root / "images").mkdir(parents=True)
    colours = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
    for split, n in (("train", 9), ("test", 6)):
        lines = []
        for i in range(n):
            name = list(colours)[i % 3]
            Image.new("RGB", (32, 32), colours[name]).save(root / "images" / f"{split}{i}.png")
            answers = [name] * 3 + ([f"{shade} {name}"] if shade else [])
            lines.append(json.dumps({"id": f"{split}{i}", "image": f"images/{split}{i}.png",
                                     "question": "What colour is the image?", "answers": answers}))
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def vqa_root(tmp_path) -> Path:
    root = tmp_path / "data"
    write_vqa_fixture(root, "vqav2")
    write_vqa_fixture(root, "okvqa", prefix_q="OpenEnded_mscoco", prefix_a="mscoco")
    return root


@pytest.hookimpl(trylast=True)  # after -m/-k deselection
def pytest_collection_modifyitems(config, items):
    """Under ``-n N`` (pytest-xdist's worksteal) worker k starts with the k-th contiguous 1/N of this list
    and steals from the others' tails when idle. Each part starts with its share of the slow tier (the
    27-cell default sweep, torchrun, SLURM), so every worker begins with long tests and the short ones
    fill in around them, instead of one long test starting last."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if workers < 2 or not slow:
        return
    fast = iter([item for item in items if item.get_closest_marker("slow") is None])
    ordered, remaining = [], len(items)
    for k in range(workers):
        size = remaining // (workers - k)  # how worksteal splits the pending tests among idle workers
        remaining -= size
        share = slow[k::workers]
        ordered += share + list(itertools.islice(fast, max(0, size - len(share))))
    ordered += list(fast)
    items[:] = ordered
