"""Assemble an OpenFlamingo model from local files: tokenizer, LM, vision tower, checkpoint.pt.

Steps mirror the package's ``create_model_and_transforms`` + ``load_state_dict``:
the tokenizer gains ``<|endofchunk|>`` and ``<image>`` (and ``<PAD>`` if it has no pad
token), the LM's embeddings are resized to the new vocabulary, cross-attention blocks are
placed before every ``cross_attn_every_n_layers``-th decoder layer, and checkpoint.pt's
tensors are loaded into each component. Unlike the package, a checkpoint tensor that
matches nothing, or a component left without weights, is an error, not silently skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.devices import resolve_device
from harness.errors import HarnessError
from models.conditioning import LMConditioning

from .modules import GatedCrossAttentionBlock, PerceiverResampler, VisionTransformer
from .weights import find_decoder_layers, load_state_dict, split_checkpoint, vision_config, vision_state_dict

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Net:
    tokenizer: Any
    lm: nn.Module
    vision: VisionTransformer
    perceiver: PerceiverResampler
    cross_attn: nn.ModuleList
    conditioning: LMConditioning
    media_token_id: int
    eoc_token_id: int
    device: torch.device
    dtype: torch.dtype

    @property
    def image_size(self) -> int:
        return self.vision.cfg.image_size

    @property
    def vis_dim(self) -> int:
        return self.vision.cfg.width

    @property
    def num_latents(self) -> int:
        return self.perceiver.latents.shape[0]


def _local_dir(path: str, what: str) -> str:
    if not path:
        raise HarnessError(f"model openflamingo needs --model-arg {what}=DIR (a local directory)")
    if not Path(path).is_dir():
        raise HarnessError(f"model openflamingo: {what} {path!r} is not a local directory (hub ids are not fetched)")
    return path


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise HarnessError(f"model openflamingo: device {name!r} is not a torch device (cpu, cuda, cuda:1 ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError(f"model openflamingo: device {name!r} asked for, but CUDA is not available here")
    return dev


def add_flamingo_tokens(tokenizer) -> None:
    """OpenFlamingo's special tokens, added in the package's order (so ids match)."""
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>"]})
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<PAD>"})
    tokenizer.padding_side = "left"


def _ensure_embedding_accessors(lm: nn.Module) -> None:
    """Remote-code LMs such as MPT-1B (MosaicGPT) lack get/set_input_embeddings; give them the
    obvious ones (``transformer.wte``), as the package's factory does for that model."""
    try:
        if lm.get_input_embeddings() is not None:
            return
    except (NotImplementedError, AttributeError):
        pass
    wte = getattr(getattr(lm, "transformer", None), "wte", None)
    if wte is None:
        raise HarnessError("model openflamingo: the LM exposes no input embeddings (get_input_embeddings)")
    lm.get_input_embeddings = lambda: lm.transformer.wte
    lm.set_input_embeddings = lambda new: setattr(lm.transformer, "wte", new)


def _resize_embeddings(lm: nn.Module, n: int) -> None:
    """Grow the vocabulary to ``n``; new rows start at the mean of the old ones (deterministic;
    checkpoint.pt normally overwrites the input rows)."""
    old = lm.get_input_embeddings().weight.shape[0]
    if n == old:
        return
    lm.resize_token_embeddings(n, mean_resizing=False)
    with torch.no_grad():
        for emb in {id(e): e for e in (lm.get_input_embeddings(), lm.get_output_embeddings()) if e is not None}.values():
            if n > old:
                emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)


def _load(module: nn.Module, sd: dict[str, torch.Tensor], what: str, source: str) -> None:
    """Strict load with an error that names the component, the file and the keys."""
    try:
        result = module.load_state_dict(sd, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise HarnessError(
            f"model openflamingo: the {what} weights in {source} do not fit the model: {str(exc)[:400]} "
            "Check vision_encoder and cross_attn_every_n_layers against the checkpoint's model card."
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise HarnessError(
            f"model openflamingo: the {what} weights in {source} do not fit the model "
            f"(missing: {result.missing_keys[:5]}{'...' if len(result.missing_keys) > 5 else ''}; "
            f"unexpected: {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}). "
            "Check vision_encoder and cross_attn_every_n_layers against the checkpoint's model card."
        )


def build(o) -> Net:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device, dtype = _device(resolve_device(o.device)), DTYPES[o.precision]
    lm_dir = _local_dir(o.lang_model, "lang_model")
    tok_dir = _local_dir(o.tokenizer or o.lang_model, "tokenizer")
    if not o.checkpoint:
        raise HarnessError("model openflamingo needs --model-arg checkpoint=PATH/checkpoint.pt")

    tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True, trust_remote_code=o.trust_remote_code)
    add_flamingo_tokens(tokenizer)
    eoc_id = tokenizer.convert_tokens_to_ids("<|endofchunk|>")
    media_id = tokenizer.convert_tokens_to_ids("<image>")

    lm = AutoModelForCausalLM.from_pretrained(
        lm_dir, local_files_only=True, trust_remote_code=o.trust_remote_code, dtype=dtype
    )  # loaded in its dtype: a later .to(dtype) would also round non-persistent buffers (rotary freqs)
    _ensure_embedding_accessors(lm)
    _resize_embeddings(lm, len(tokenizer))
    layers_attr, layers = find_decoder_layers(lm, o.decoder_layers_attr)
    cfg = lm.config
    lang_dim = getattr(cfg, "d_model", None) or cfg.hidden_size

    vcfg = vision_config(o.vision_encoder, o.quick_gelu)
    vision = VisionTransformer(vcfg, token_ln_post=o.vision_token_ln_post)

    parts = split_checkpoint(load_state_dict(o.checkpoint, "checkpoint"), layers_attr)
    if not parts.perceiver:
        raise HarnessError(f"model openflamingo: {o.checkpoint} has no perceiver.* tensors; is it an OpenFlamingo checkpoint.pt?")

    vision_sd: dict[str, torch.Tensor] = {}
    if o.vision_weights:
        vision_sd.update(vision_state_dict(load_state_dict(o.vision_weights, "vision_weights")))
    vision_sd.update(parts.vision)
    if not vision_sd:
        raise HarnessError("model openflamingo needs --model-arg vision_weights=FILE (the open_clip tower's state dict)")
    _load(vision, vision_sd, "vision encoder", o.vision_weights or o.checkpoint)

    depth = 1 + max(int(k.split(".")[1]) for k in parts.perceiver if k.startswith("layers."))
    perceiver = PerceiverResampler(dim=vcfg.width, depth=depth, num_latents=parts.perceiver["latents"].shape[0])
    _load(perceiver, parts.perceiver, "perceiver", o.checkpoint)

    n = o.cross_attn_every_n_layers
    blocks = nn.ModuleList(
        [GatedCrossAttentionBlock(dim=lang_dim, dim_visual=vcfg.width) if (i + 1) % n == 0 else None for i in range(len(layers))]
    )
    _load(blocks, parts.cross_attn, "cross-attention", o.checkpoint)

    if parts.lm:
        try:
            result = lm.load_state_dict(parts.lm, strict=False)
        except RuntimeError as exc:
            raise HarnessError(f"model openflamingo: LM tensors in {o.checkpoint} do not fit {lm_dir}: {str(exc)[:400]}") from None
        if result.unexpected_keys:
            raise HarnessError(
                f"model openflamingo: {o.checkpoint} has LM tensors the LM in {lm_dir} lacks: {result.unexpected_keys[:5]}"
            )
        log.info("openflamingo: %d LM tensors taken from %s", len(parts.lm), o.checkpoint)

    lm.to(device=device).eval()
    for m in (vision, perceiver, blocks):
        m.to(device=device, dtype=dtype).eval()
    for m in (lm, vision, perceiver, blocks):
        m.requires_grad_(False)
    # text_time from each call's ids (generate feeds the LM itself); an unconditioned call is an error
    conditioning = LMConditioning(zip(layers, blocks), media_id, lm.get_input_embeddings(), strict=True)
    return Net(tokenizer, lm, vision, perceiver, blocks, conditioning, media_id, eoc_id, device, dtype)
