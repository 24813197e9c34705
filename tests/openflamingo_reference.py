"""A tiny random-weight OpenFlamingo built with the real ``open-flamingo`` package, for parity tests.

How the package is made to import here
--------------------------------------
``open_flamingo`` imports ``open_clip``, and open_clip imports torchvision at module
level: ``torchvision.transforms`` (Normalize, Compose, RandomResizedCrop, InterpolationMode,
ToTensor, Resize, CenterCrop), ``torchvision.transforms.functional`` and
``torchvision.ops.misc.FrozenBatchNorm2d``. torchvision cannot be installed next to the CPU
torch here. :func:`import_open_flamingo` therefore puts a minimal stand-in for exactly those
names into ``sys.modules`` *only while open_clip and open_flamingo are imported*, and takes
it out again afterwards (transformers is imported first, so it has already decided that
torchvision is absent and never sees the stand-in).

One signature shim (see :func:`_default_attention_mask`): under transformers 5 the package's
``FlamingoLMMixin.forward`` would fail on unpadded batches; its mask argument gets the default None.

Why this cannot affect what the parity test compares:
- the stand-ins are only used to *build* open_clip's image-preprocessing pipeline, which
  ``create_model_and_transforms`` returns and the test never calls; every stand-in raises
  if it is ever applied to data, so a use would fail the test, not bend it;
- ``FrozenBatchNorm2d`` is only used by open_clip to freeze ResNet towers (never a ViT);
- both sides receive the same preprocessed pixel tensors, so image preprocessing is not
  part of the comparison; the vision tower, resampler, cross-attention, LM and the
  package's ``Flamingo.generate`` / ``Flamingo.forward`` are the real, unmodified code.

If a real torchvision is importable, it is used and no stand-in is installed.
"""

from __future__ import annotations

import enum
import importlib.util
import json
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_TV_NAMES = ("Normalize", "Compose", "RandomResizedCrop", "ToTensor", "Resize", "CenterCrop", "ColorJitter", "Grayscale")


def _stand_in(name: str) -> type:
    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in {name} was applied to data; the parity test must not preprocess with it")

    return type(name, (), {"__init__": __init__, "__call__": __call__, "__module__": "torchvision_stand_in"})


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    tv = types.ModuleType("torchvision")
    transforms = types.ModuleType("torchvision.transforms")
    functional = types.ModuleType("torchvision.transforms.functional")
    ops = types.ModuleType("torchvision.ops")
    misc = types.ModuleType("torchvision.ops.misc")

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    for name in _TV_NAMES:
        setattr(transforms, name, _stand_in(name))
    transforms.InterpolationMode = InterpolationMode
    transforms.functional = functional
    misc.FrozenBatchNorm2d = _stand_in("FrozenBatchNorm2d")
    ops.misc = misc
    tv.transforms, tv.ops = transforms, ops
    return {"torchvision": tv, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional,
            "torchvision.ops": ops, "torchvision.ops.misc": misc}


def import_open_flamingo():
    """Import (open_clip, open_flamingo), with the torchvision stand-in only during the import."""
    if "open_flamingo" in sys.modules:
        return sys.modules["open_clip"], sys.modules["open_flamingo"]
    import transformers  # noqa: F401  (decides "no torchvision" before the stand-in exists)
    from transformers.utils import is_torchvision_available

    is_torchvision_available()
    real = importlib.util.find_spec("torchvision") is not None
    stand_in = {} if real else _torchvision_stand_in()
    saved = {k: sys.modules.get(k) for k in stand_in}
    sys.modules.update(stand_in)
    try:
        import open_clip
        import open_flamingo
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
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
