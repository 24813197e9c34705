"""Commands that work as printed: the `harness` console script that scripts/setup.sh installs, the hints
the harness prints (run again through a shell), `python run_eval.py` with a Python that lacks the
dependencies, flags users bring from lm-eval/lmms-eval/OpenFlamingo, `-v` anywhere, `score`'s table."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, run_cli, write_vqa_fixture


def _hint(stdout: str, prefix: str = "browse the samples: ") -> str:
    (line,) = [x for x in stdout.splitlines() if x.startswith(prefix)]
    return line.removeprefix(prefix)


# ---- peer flags and -v ------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, hint", [
    (["run", "--num_fewshot", "4"], "--num_fewshot 4: use --shots 4"),
    (["run", "--model_args", "a=1,b=2"], "--model_args a=1,b=2: use --model-arg a=1 --model-arg b=2"),
    (["run", "--model_args=path=/x,dtype=bf16"], "use --model-arg path=/x --model-arg dtype=bf16"),
    (["run", "--gen_kwargs", "max_new_tokens=5,num_beams=1"], "use --task-arg max_new_tokens=5 --task-arg num_beams=1"),
    (["run", "--output_path", "out/"], "use --output out/"),
    (["run", "--log_samples", "--tasks", "x"], "drop --log_samples"),
    (["run", "--device", "cuda:0"], "use --model-arg device=cuda:0"),
    (["run", "--num_samples", "5000"], "use --sample 5000"),
    (["run", "--trial_seeds", "42", "43"], "use --seeds 42 43"),
    (["run", "--num_trials", "3"], "--seeds 0 1 2"),
])
def test_peer_flag_hints(argv, hint):
    from harness.peer_flags import peer_flag_hint

    got = peer_flag_hint(argv)
    assert got is not None and hint in got and "\n" not in got


def test_peer_flags_in_a_real_run_and_aliases(tmp_path):
    proc = run_cli("run", "--model", "demo-majority", "--num_fewshot", "4", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().endswith("error: --num_fewshot 4: use --shots 4 (several values sweep them: --shots 0 4 32)")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert run_cli("run", "--model_args", "a=1,b=2", check=False).stderr.strip().endswith(
        "--model_args a=1,b=2: use --model-arg a=1 --model-arg b=2")
    assert run_cli("list", "tasks", "--", "--num_fewshot", check=False).returncode == 2  # after --: not a flag
    # same meaning, other spelling: accepted (lm-eval's --batch_size, --include_path)
    out = tmp_path / "res"
    proc = run_cli("run", "--model", "demo-majority,constant", "--include_path", "examples/my_model.py",
                   "--tasks", "easyvqa", "--shots", "0", "--seeds", "0", "--limit", "8", "--batch_size", "3",
                   "--output", str(out), "-q")
    assert "constant 0-shot" in proc.stdout


def test_verbose_before_or_after_the_subcommand(tmp_path):
    from harness.cli import build_parser

    p = build_parser()
    assert p.parse_args(["-v", "compare", "x"]).verbose is True
    assert p.parse_args(["compare", "x", "-v"]).verbose is True
    assert p.parse_args(["compare", "x"]).verbose is False
    assert p.parse_args(["run", "--model", "m", "-v"]).verbose is True
    assert p.parse_args(["list", "tasks", "-v"]).verbose is True  # list: shows each one's options
    proc = run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "--seeds", "0",
                   "--limit", "2", "--output", str(tmp_path / "res"), "-v", check=False)
    assert "DEBUG" in proc.stderr


# ---- what hints print -----------------------------------------------------------------------------------
def test_program_names_the_command_that_works(tmp_path):
    from harness.program import program

    venv_py = str(ROOT / ".venv" / "bin" / "python")
    script = str(ROOT / "run_eval.py")
    if (ROOT / ".venv" / "bin" / "python").exists():
        assert program(script, venv_py, cwd=ROOT) == "./run_eval.py"
        assert program(script, venv_py, cwd=tmp_path) == script
    assert program(script, "/usr/bin/python3", cwd=ROOT) == "/usr/bin/python3 run_eval.py"
    assert program(str(ROOT / "harness" / "__main__.py"), "/opt/py/bin/python") == "/opt/py/bin/python -m harness"
    fake = tmp_path / "bin" / "harness"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert program(str(fake), venv_py, cwd=tmp_path) == "bin/harness"  # not the harness on PATH
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{fake.parent}:{old}"
    try:
        assert program(str(fake), venv_py, cwd=tmp_path) == "harness"
    finally:
        os.environ["PATH"] = old


@pytest.mark.slow
def test_printed_view_and_merge_commands_run_as_printed(tmp_path):
    out = tmp_path / "res"
    common = ["--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0", "--seeds", "0", "--limit", "6",
              "--output", str(out), "-q"]
    shard = run_cli("run", *common, "--shard", "0/2").stdout
    run_cli("run", *common, "--shard", "1/2")
    merge = _hint(shard, "shard 0/2 done").split("compute the metrics: ")[1].split(" (or rerun")[0]
    proc = subprocess.run(merge, shell=True, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "merged the shards" in proc.stdout and len(list(out.rglob("metrics.json"))) == 1
    view = _hint(run_cli("run", *common).stdout)
    proc = subprocess.run(view, shell=True, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.html").stat().st_size > 1000


# ---- an interpreter without the dependencies -------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("entry", [["run_eval.py"], ["-m", "harness"]])
def test_python_without_dependencies_says_what_to_run(entry):
    # -S: no site-packages, as a system python without the project's packages
    proc = subprocess.run([sys.executable, "-S", *entry, "run", "--tasks", "easyvqa"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: this Python ({sys.executable}) lacks torch, ")
    assert "run_eval.py run --tasks easyvqa" in line and ".venv" in line


# ---- score ----------------------------------------------------------------------------------------------
def test_score_prints_a_readable_table(tmp_path):
    root = tmp_path / "data"
    write_vqa_fixture(root, "vqav2")
    ann = json.loads((root / "vqav2" / "v2_mscoco_val2014_annotations.json").read_text())["annotations"]
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps([{"question_id": a["question_id"], "answer": "yes"} for a in ann]))
    args = ["score", "--task", "vqav2", "--predictions", str(preds), "--data-dir", str(root)]
    metrics = json.loads(run_cli(*args, "--json").stdout)
    text = run_cli(*args).stdout
    assert "{" not in text and "}" not in text  # not a Python dict
    rows = {line.split()[0]: line for line in text.splitlines()}
    lo, hi = metrics["accuracy_ci95"]
    assert rows["accuracy"].split()[1] == f"{metrics['accuracy']:.2f}" and f"(95% CI {lo:.2f}-{hi:.2f})" in text
    assert "accuracy_ci95" not in rows  # beside its metric
    assert rows["n"].split() == ["n", str(metrics["n"])]
    for kind, value in metrics["accuracy_by_answer_type"].items():
        assert f"\n  {kind} " in text and f"{value:.2f}" in text
    # aligned: every value starts in the same column
    starts = {len(line) - len(line[len(line.split("  ")[0]):].lstrip()) for line in text.splitlines()
              if not line.startswith(" ") and len(line.split()) > 1}
    assert len(starts) == 1


# ---- the console script, installed by scripts/setup.sh -------------------------------------------------
@pytest.mark.slow
def test_setup_installs_the_harness_command(tmp_path):
    """scripts/setup.sh on a copy of the checkout whose .venv already holds the requirements (a throwaway
    venv that sees this environment's site-packages, so nothing is downloaded or installed here): it installs
    the project, `.venv/bin/harness` works, and after `source .venv/bin/activate` its hints say `harness`."""
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.splitlines()
    for f in files:
        if (ROOT / f).is_file():
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, repo / f)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(repo / ".venv")], check=True)
    (purelib,) = (repo / ".venv" / "lib").glob("python3*/site-packages")
    (purelib / "shared-env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    want = hashlib.sha256((repo / "requirements.txt").read_bytes() + (repo / "requirements-nodeps.txt").read_bytes())
    (repo / ".venv" / ".requirements.sha256").write_text(want.hexdigest() + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    proc = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "installing the project" in proc.stderr and "installing requirements" not in proc.stderr
    harness = repo / ".venv" / "bin" / "harness"
    assert harness.is_file()
    again = subprocess.run(["bash", "scripts/setup.sh"], cwd=repo, capture_output=True, text=True, env=env)
    assert again.returncode == 0 and again.stderr == ""  # idempotent

    # as after `source .venv/bin/activate`: the venv's bin first on PATH, from any folder
    env["PATH"] = f"{harness.parent}:{env['PATH']}"
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(["harness", "run", "--model", "demo-majority", "--tasks", "easyvqa", "--shots", "0",
                           "--seeds", "0", "--limit", "5", "--output", "res", "-q", "--threads", "1"], cwd=work,
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    view = _hint(proc.stdout)
    assert view == "harness view res --output res/report.html"
    proc = subprocess.run(view, shell=True, cwd=work, capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and (work / "res" / "report.html").is_file(), proc.stderr
    usage = subprocess.run(["harness", "--help"], cwd=work, capture_output=True, text=True, env=env).stdout
    assert usage.startswith("usage: harness ")
    # the installed command runs the checkout's code (editable), not a copy
    where = subprocess.run([str(repo / ".venv" / "bin" / "python"), "-c", "import harness; print(harness.__file__)"],
                           cwd=work, capture_output=True, text=True, env=env).stdout.strip()
    assert where == str(repo / "harness" / "__init__.py")
