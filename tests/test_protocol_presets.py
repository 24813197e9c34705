"""Issue 22: the published protocols as presets (``--protocol flamingo|openflamingo|idefics``), recorded
in the config; suites use their paper's preset."""

from __future__ import annotations

import json

import pytest

from conftest import run_cli
from harness.errors import HarnessError
from harness.plugins import load_builtins
from harness.registry import get_task_class

load_builtins()


def opts(task: str, **given):
    return get_task_class(task)("/nonexistent-data-root", given).options


def test_flamingo_preset_sets_the_papers_choices_per_task():
    vqa = opts("vqav2", protocol="flamingo")
    assert (vqa.template, vqa.num_beams, vqa.length_penalty, vqa.sampler) == ("flamingo", 3, 0.0, "random")
    inet = opts("imagenet", protocol="flamingo")
    assert (inet.sampler, inet.rices_encoder, inet.ensemble, inet.template) == ("rices", "model", 6, "flamingo")
    kin = opts("kinetics700", protocol="flamingo")
    assert (kin.sampler, kin.rices_encoder, kin.ensemble, kin.fps, kin.max_frames) == ("rices", "model", 6, 3.0, 30)
    star = opts("star", protocol="flamingo")
    assert (star.ensemble, star.fps, star.max_frames, star.sampler) == (6, 3.0, 30, "random")
    assert opts("hateful_memes", protocol="flamingo").ensemble == 6
    # RareAct has no demos at all: the preset leaves its zero-shot setting alone
    assert opts("rareact", protocol="flamingo").zero_shot_text_demos == opts("rareact").zero_shot_text_demos == 0


def test_openflamingo_and_idefics_presets():
    inet = opts("imagenet", protocol="openflamingo")
    assert (inet.sampler, inet.ensemble, inet.length_normalization, inet.template) == ("random", 1, "tokens",
                                                                                      "openflamingo")
    assert opts("hateful_memes", protocol="openflamingo").length_normalization == "tokens"
    assert opts("star", protocol="openflamingo").length_normalization == "none"  # not an OpenFlamingo task
    assert opts("vqav2", protocol="openflamingo").answer_choice == "first"
    ide = opts("okvqa", protocol="idefics")
    assert (ide.answer_choice, ide.template) == ("most_common", "flamingo")


def test_explicit_options_win_and_groups_stay_whole():
    assert opts("vqav2", protocol="flamingo", template="openflamingo").template == "openflamingo"
    # --frames given: the preset's fps/max_frames (one frame-selection group) are not mixed in
    msvd = opts("msvd_qa", protocol="flamingo", frames="4")
    assert (msvd.frames, msvd.fps, msvd.max_frames) == (4, None, None)
    # the user's own RICES encoder replaces the preset's whole sampler group
    inet = opts("imagenet", protocol="flamingo", sampler="class_balanced")
    assert (inet.sampler, inet.rices_encoder) == ("class_balanced", None)
    with pytest.raises(HarnessError, match="unknown protocol 'nope'; presets: flamingo, idefics, openflamingo"):
        opts("vqav2", protocol="nope")


def test_the_preset_is_recorded_only_when_used():
    task = get_task_class("vqav2")("/nonexistent-data-root", {"protocol": "flamingo"})
    import dataclasses

    assert dataclasses.asdict(task.options)["protocol"] == "flamingo"
    plain = get_task_class("easyvqa")(None, {})
    assert "protocol" not in plain.config()["options"]  # no preset: the configuration reads as before
    assert get_task_class("easyvqa")(None, {"protocol": "flamingo"}).config()["options"]["protocol"] == "flamingo"


def test_suites_carry_their_papers_preset():
    from harness.evaluation.suites import expand, get_suite
    from harness.registry import task_names

    assert get_suite("flamingo16").protocol == "flamingo" and get_suite("video").protocol == "flamingo"
    assert get_suite("openflamingo").protocol == "openflamingo"
    exp = expand(["openflamingo", "easyvqa"], None, (0,), task_names())
    assert exp.protocols["vqav2"] == "openflamingo" and "easyvqa" not in exp.protocols


def test_cli_protocol_flag_is_recorded_and_bad_names_fail_early(tmp_path):
    out = tmp_path / "out"
    run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--protocol", "flamingo", "--limit", "3",
            "--shots", "0", "--seeds", "0", "--output", str(out), "-q")
    (metrics,) = out.rglob("metrics.json")
    task = json.loads(metrics.read_text())["config"]["task"]
    assert task["options"]["protocol"] == "flamingo" and task["template"] == "flamingo"
    assert task["options"]["num_beams"] == 3
    bad = run_cli("run", "--model", "demo-majority", "--tasks", "easyvqa", "--protocol", "flamingo2",
                  "--output", str(tmp_path / "bad"), check=False)
    assert bad.returncode == 2 and "error: unknown protocol 'flamingo2'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()
    listed = run_cli("list", "protocols").stdout
    assert "flamingo" in listed and "openflamingo" in listed and "source: Alayrac et al. 2022" in listed
