"""A small random-weight OpenFlamingo written to disk in the published layout, built from a config.

For benchmarks and tests: :func:`write_synthetic` saves an open_clip model-config JSON and
vision state dict, a Hugging Face LLaMA directory, a BPE tokenizer and a ``checkpoint.pt``
(resampler + gated cross-attention + embeddings), all from this package's own modules, so
:class:`models.openflamingo.OpenFlamingo` loads them like a real checkpoint. The gates are
opened (random init leaves them at 0, where images change nothing). Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

CORPUS = [
    "Question:What color is the shape? Short answer:red green blue yellow gray teal black brown",
    "Question:Is there a circle in the image? Short answer:yes no rectangle triangle circle",
    "Question:How many animals are in the picture? Short answer:one two three four none",
    "Output:A photo of a cat sitting on a bench next to a dog and a person.",
]


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the synthetic model (defaults: about 8.8M parameters, OpenFlamingo's 64 latents
    and 8 x 64 cross-attention heads)."""

    image_size: int = 32
    patch_size: int = 8
    vision_width: int = 128
    vision_layers: int = 2
    perceiver_depth: int = 2
    lm_hidden: int = 256
    lm_layers: int = 4
    lm_heads: int = 4
    cross_attn_every_n_layers: int = 1
    vocab_size: int = 400
    seed: int = 0


def write_tokenizer(directory: Path, vocab_size: int = 400) -> Path:
    """A byte-level BPE trained on a few sentences; adds BOS like LLaMA's tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>").save_pretrained(directory)
    return directory


def write_synthetic(root: str | Path, cfg: SyntheticConfig = SyntheticConfig()) -> dict[str, str]:
    """Write the model's files under ``root``; returns the ``--model-arg`` options that load it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from .build import add_flamingo_tokens
    from .modules import GatedCrossAttentionBlock, PerceiverResampler, VisionConfig, VisionTransformer

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tok_dir = write_tokenizer(root / "tokenizer", cfg.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    add_flamingo_tokens(tokenizer)

    torch.manual_seed(cfg.seed)
    lm_cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=cfg.lm_hidden, intermediate_size=2 * cfg.lm_hidden,
                         num_hidden_layers=cfg.lm_layers, num_attention_heads=cfg.lm_heads,
                         num_key_value_heads=cfg.lm_heads, max_position_embeddings=4096, bos_token_id=0,
                         eos_token_id=1, tie_word_embeddings=True, initializer_range=0.1)
    lm = LlamaForCausalLM(lm_cfg)
    lm.save_pretrained(root / "lm")

    vcfg = VisionConfig(image_size=cfg.image_size, patch_size=cfg.patch_size, width=cfg.vision_width,
                        layers=cfg.vision_layers, head_width=32)
    (root / "vision.json").write_text(json.dumps({
        "embed_dim": vcfg.output_dim, "quick_gelu": True,
        "vision_cfg": {k: v for k, v in asdict(vcfg).items() if k in ("image_size", "patch_size", "width", "layers",
                                                                       "head_width", "mlp_ratio")},
    }))
    vision = VisionTransformer(vcfg)
    torch.save({f"visual.{k}": v for k, v in vision.state_dict().items()}, root / "vision.pt")

    perceiver = PerceiverResampler(dim=cfg.vision_width, depth=cfg.perceiver_depth)
    every = cfg.cross_attn_every_n_layers
    blocks = [GatedCrossAttentionBlock(dim=cfg.lm_hidden, dim_visual=cfg.vision_width) if (i + 1) % every == 0 else None
              for i in range(cfg.lm_layers)]
    g = torch.Generator().manual_seed(cfg.seed + 1)
    ckpt = {f"perceiver.{k}": v for k, v in perceiver.state_dict().items()}
    for i, block in enumerate(blocks):
        if block is None:
            continue
        with torch.no_grad():
            block.attn_gate.copy_(torch.rand(1, generator=g) * 2 - 1)
            block.ff_gate.copy_(torch.rand(1, generator=g) * 2 - 1)
        ckpt.update({f"lang_encoder.gated_cross_attn_layers.{i}.{k}": v for k, v in block.state_dict().items()})
    ckpt["lang_encoder.model.embed_tokens.weight"] = lm.get_input_embeddings().weight.detach().clone()
    torch.save(ckpt, root / "checkpoint.pt")
    return {"vision_encoder": str(root / "vision.json"), "vision_weights": str(root / "vision.pt"),
            "lang_model": str(root / "lm"), "tokenizer": str(tok_dir), "checkpoint": str(root / "checkpoint.pt"),
            "cross_attn_every_n_layers": str(every)}
