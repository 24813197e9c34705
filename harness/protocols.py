"""Published evaluation protocols as named presets: ``--protocol flamingo`` (or ``openflamingo``,
``idefics``), or the task option ``protocol=NAME``.

A preset is a set of task options (template, demo selection, zero-shot demos, decoding, prompt
ensembling, length normalisation, video frames) chosen by rules that match tasks by kind (open-ended
``generate`` / close-ended ``loglikelihood``), by family (video) or by name. A task takes only the
options it has; options given explicitly (``--task-arg``, ``--frames``...) win over the preset, and a
group of options that only make sense together (the frame selection; the sampler and its encoder) is
taken from the preset only when none of its members was given. The preset's name is recorded in the
cell's configuration (task option ``protocol``) and the options it set are recorded like any other.

A preset sets how the model is prompted, decoded and ranked, never how it is scored: every benchmark
is scored by its own evaluator (docs/benchmarks.md), whatever the preset. Choices on which the papers
agree with the harness defaults (two text-only demos at 0 shots, a random support set of 2048 train
examples) are left to the defaults. docs/protocols.md lists every value with its source.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from harness.errors import HarnessError

#: Options a preset sets all together or not at all (when the user gave any of them, the preset's are skipped).
GROUPS = (frozenset({"frames", "fps", "max_frames"}), frozenset({"sampler", "rices_encoder"}))
VIDEO = "video"


@dataclass(frozen=True)
class Rule:
    """Options for the tasks that match ``match``: ``*`` (every task), ``generate`` / ``loglikelihood``
    (by kind), ``video`` (video tasks) or a task name."""

    match: str
    options: Mapping[str, str]


@dataclass(frozen=True)
class Protocol:
    name: str
    description: str
    source: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)


def _is_video(task_cls: type) -> bool:
    """Video tasks are the ones with frame-selection options (harness.data.video)."""
    return "fps" in {f.name for f in fields(task_cls.Options)}


def _matches(rule: Rule, task_cls: type) -> bool:
    if rule.match == "*":
        return True
    if rule.match in ("generate", "loglikelihood"):
        return task_cls.kind == rule.match
    if rule.match == VIDEO:
        return _is_video(task_cls)
    return rule.match == task_cls.registry_name


PROTOCOLS: dict[str, Protocol] = {}


def define_protocol(protocol: Protocol) -> Protocol:
    """Register a preset (built-in below, or from a plug-in file given with --include)."""
    PROTOCOLS[protocol.name] = protocol
    return protocol


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise HarnessError(f"unknown protocol {name!r}; presets: {', '.join(sorted(PROTOCOLS))} "
                           f"(see docs/protocols.md)")
    return PROTOCOLS[name]


def preset_options(name: str, task_cls: type, explicit: Mapping[str, Any]) -> dict[str, str]:
    """The options preset ``name`` gives a task of class ``task_cls`` (later rules win over earlier
    ones), less those the task does not have, those in ``explicit``, and whole groups of which
    ``explicit`` has a member."""
    protocol = get_protocol(name)
    have = {f.name for f in fields(task_cls.Options)}
    out: dict[str, str] = {}
    for rule in protocol.rules:
        if _matches(rule, task_cls):
            out.update({k: v for k, v in rule.options.items() if k in have})
    if "template" in out and out["template"] not in task_cls.templates:
        del out["template"]  # the task has no template of that style: its own default stays
    for group in GROUPS:
        if group & set(explicit):
            for k in group:
                out.pop(k, None)
    return {k: v for k, v in out.items() if k not in explicit}


# ---- the published protocols (sources and every value: docs/protocols.md) --------------------------------
define_protocol(Protocol(
    "flamingo",
    "Flamingo's paper protocol: its prompts, two text-only demos at 0 shots, beam search 3, prompt "
    "ensembling over 6 demo orders for close-ended tasks, RICES demos (the model's own vision encoder) "
    "for ImageNet and Kinetics, video at 3 FPS up to 30 frames",
    "Alayrac et al. 2022, Flamingo: a Visual Language Model for Few-Shot Learning (NeurIPS), "
    "section 3 and the appendix on evaluation",
    (
        Rule("*", {"template": "flamingo"}),
        Rule("generate", {"num_beams": "3", "length_penalty": "0.0"}),
        Rule("loglikelihood", {"ensemble": "6"}),
        Rule(VIDEO, {"fps": "3", "max_frames": "30"}),
        Rule("imagenet", {"sampler": "rices", "rices_encoder": "model"}),
        Rule("kinetics700", {"sampler": "rices", "rices_encoder": "model"}),
    ),
))
define_protocol(Protocol(
    "openflamingo",
    "OpenFlamingo's evaluation code: its prompts (with the newline after VQA/captioning demos), two "
    "text-only demos at 0 shots, first-annotator demo answers, random demos from 2048, beam search 3, "
    "no prompt ensembling, class names ranked by their mean token log-prob",
    "Awadalla et al. 2023, OpenFlamingo technical report; mlfoundations/open_flamingo "
    "open_flamingo/eval/evaluate.py (head)",
    (
        Rule("*", {"template": "openflamingo", "answer_choice": "first", "sampler": "random"}),
        Rule("generate", {"num_beams": "3", "length_penalty": "0.0"}),
        Rule("loglikelihood", {"ensemble": "1"}),
        Rule("imagenet", {"length_normalization": "tokens"}),
        Rule("hateful_memes", {"length_normalization": "tokens"}),
    ),
))
define_protocol(Protocol(
    "idefics",
    "IDEFICS's evaluation as far as published: Flamingo-style prompts, the most common annotator answer "
    "in VQA demos, random demos; the rest at the harness defaults",
    "Laurençon et al. 2023, OBELICS (NeurIPS Datasets and Benchmarks); the IDEFICS model card",
    (
        Rule("*", {"template": "flamingo", "answer_choice": "most_common", "sampler": "random"}),
    ),
))
