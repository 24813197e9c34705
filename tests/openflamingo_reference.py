"""A tiny random-weight OpenFlamingo built with the real ``open-flamingo`` package, for parity tests.

How the package is made to run here
-----------------------------------
``open_flamingo`` imports ``open_clip``, which imports torchvision (pinned in requirements.txt
beside torch). One signature shim (see :func:`_default_attention_mask`): under transformers 5 the
package's ``FlamingoLMMixin.forward`` would fail on unpadded batches; its mask argument gets the
default None. Both sides receive the same preprocessed pixel tensors, so image preprocessing is not
part of the parity comparison (tests/test_openflamingo.py compares it with open_clip's transform
separately); the vision tower, resampler, cross-attention, LM and the package's
``Flamingo.generate`` / ``Flamingo.forward`` are the real, unmodified code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def import_open_flamingo():
    """Import (open_clip, open_flamingo), with the package's forward shimmed (see the module docstring)."""
    if "open_flamingo" in sys.modules:
        return sys.modules["open_clip"], sys.modules["open_flamingo"]
    import open_clip
    import open_flamingo

    _default_attention_mask()
    return open_clip, open_flamingo


def _default_attention_mask() -> None:
    """transformers >= 5 drops an all-ones attention mask before calling forward during
    generate (no padding, e.g. a batch of one); the package's ``FlamingoLMMixin.forward``
    requires the argument. Give it the default ``None``, which Hugging Face models read as
    "all ones", the exact meaning of the dropped mask. The body of forward is unchanged."""
    from open_flamingo.src.flamingo_lm import FlamingoLMMixin

    if getattr(FlamingoLMMixin.forward, "_mask_default", False):
        return
    original = FlamingoLMMixin.forward

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return original(self, input_ids, attention_mask, **kwargs)

    forward._mask_default = True
    FlamingoLMMixin.forward = forward


CORPUS = [
    "Question:What color is the shape? Short answer:red green blue yellow gray teal black brown",
    "Question:Is there a circle in the image? Short answer:yes no rectangle triangle circle",
    "Output:A photo of a cat sitting on a bench next to a dog and a person.",
]

#: a tiny open_clip model config (ViT tower with QuickGELU, like OpenAI's ViT-L-14), registered under this name
TINY_VIT_NAME = "tiny-of-vit"


def write_tokenizer(directory: Path) -> Path:
    """A byte-level BPE trained on a few sentences; adds BOS like LLaMA's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(directory)
    return directory


def write_lm(directory: Path, vocab_size: int, seed: int) -> Path:
    """A tiny LLaMA with tied embeddings (so checkpoint.pt's embeddings cover the output too, as for MPT)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      bos_token_id=0, eos_token_id=1, tie_word_embeddings=True,
                      initializer_range=0.25)  # sharp, context-dependent logits: a weak model would make parity vacuous
    LlamaForCausalLM(cfg).save_pretrained(directory)
    return directory


def write_vision_config(path: Path) -> Path:
    path.write_text(json.dumps({
        "embed_dim": 32,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
    }))
    return path


def build_reference(root: Path, cross_attn_every_n_layers: int = 2, seed: int = 0):
    """Build the package's Flamingo and save its parts the way OpenFlamingo is published.

    Returns (flamingo, tokenizer, paths) where paths has ``vision_config``, ``vision_weights``
    (an open_clip CLIP-style state dict, ``visual.*``), ``lang_model``, ``tokenizer`` and
    ``checkpoint`` (perceiver, cross-attention and embeddings only, like the released files).
    """
    import torch

    open_clip, open_flamingo = import_open_flamingo()
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = write_tokenizer(root / "tokenizer")
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(tok_dir))
    lm_dir = write_lm(root / "lm", vocab, seed)
    vcfg = write_vision_config(root / f"{TINY_VIT_NAME}.json")
    open_clip.add_model_config(vcfg)

    torch.manual_seed(seed + 1)
    model, _image_processor, tokenizer = open_flamingo.create_model_and_transforms(
        TINY_VIT_NAME, None, str(lm_dir), str(tok_dir),
        cross_attn_every_n_layers=cross_attn_every_n_layers, use_local_files=True,
    )
    # Gates start at 0 (cross-attention off); give them values so images change the outputs.
    g = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        for block in model.lang_encoder.gated_cross_attn_layers:
            if block is not None:
                block.attn_gate.copy_(torch.rand(1, generator=g) * 2 - 1)
                block.ff_gate.copy_(torch.rand(1, generator=g) * 2 - 1)
    model.eval()
    tokenizer.padding_side = "left"

    vision_weights = root / "open_clip_vision.pt"
    torch.save({f"visual.{k}": v for k, v in model.vision_encoder.state_dict().items()}, vision_weights)
    trained = {k: v for k, v in model.state_dict().items()
               if k.startswith("perceiver.") or "gated_cross_attn" in k or "embed_tokens" in k}
    checkpoint = root / "checkpoint.pt"
    torch.save(trained, checkpoint)
    paths = {"vision_config": vcfg, "vision_weights": vision_weights, "lang_model": lm_dir,
             "tokenizer": tok_dir, "checkpoint": checkpoint}
    return model, tokenizer, paths
