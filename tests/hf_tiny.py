"""Tiny random-weight Hugging Face VLMs of five families, built offline and saved with save_pretrained.

Each builder writes a model directory as a hub snapshot has it: config and weights from the family's
transformers config (text and vision towers shrunk), a BPE tokenizer trained here on a few sentences
with the family's special tokens, a chat template in the family's style, and the family's PIL image
processor. Qwen2-VL and LLaVA-OneVision processors also get their video processor (torchvision), sized
as small as their image processor. Imported by tests/test_hf.py (the lead owns tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

CORPUS = [
    "Question: what color is the shape? Answer: red green blue yellow gray teal black brown",
    "Question: what shape is in the image? Answer: circle rectangle triangle",
    "Question: is there a circle in the image? Answer: yes no",
    "Question: does the image contain a blue shape? Answer: yes no",
    "Question: is no green shape present? Answer: yes no",
    "You are a helpful assistant. user assistant system model",
] * 20

# Chat templates in each family's style (the real ones, trimmed to what a few-shot prompt uses).
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video' %}"
    "<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
IDEFICS3_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
LLAVA_OV_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + ' ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}"
    "{% endfor %}{{ '<|im_end|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first = messages[0]['content'][0]['text'] + '\n\n' %}"
    "{% set loop_messages = messages[1:] %}{% else %}{% set first = '' %}{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{% if loop.first %}{{ first }}{% endif %}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] | trim }}{% endif %}{% endfor %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


def tiny_tokenizer(specials: list[str], bos: str, eos: str, pad: str, extra: dict | None = None,
                   chat_template: str | None = None):
    """A byte-level BPE trained on CORPUS, with the family's special tokens added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    base = ["<unk>"] + [t for t in dict.fromkeys([bos, eos, pad]) if t != "<unk>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=base,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token=bos, eos_token=eos,
                                 pad_token=pad, padding_side="left", extra_special_tokens=extra or {})
    hf.add_special_tokens({"additional_special_tokens": [s for s in specials if s not in hf.get_vocab()]})
    if chat_template is not None:
        hf.chat_template = chat_template
    return hf


def _llama_text(vocab: int, tok) -> dict:
    return dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id, max_position_embeddings=4096)


def build_qwen2_vl(directory: Path):
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor)

    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = tiny_tokenizer(specials, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>",
                         chat_template=QWEN_TEMPLATE)
    ids = {s: tok.convert_tokens_to_ids(s) for s in specials}
    text = _llama_text(len(tok), tok)
    text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, patch_size=8, spatial_merge_size=2,
                           temporal_patch_size=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    # 64x64 easy-VQA images -> 8x8 patches of 8 px -> 16 tokens after the 2x2 merge.
    image_processor = Qwen2VLImageProcessorPil(patch_size=8, merge_size=2, temporal_patch_size=2,
                                               min_pixels=32 * 32, max_pixels=64 * 64)
    # video frames: 2 frames per temporal patch, 32x32 each -> 4 tokens per 2 frames
    video_processor = Qwen2VLVideoProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                                            max_pixels=32 * 32, cap_pixels_per_frame=False)
    processor = Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                 chat_template=QWEN_TEMPLATE)
    return Qwen2VLForConditionalGeneration(config), processor


def _idefics3_style(config_cls, model_cls, image_processor_cls, processor_cls, **processor_kw):
    """Idefics3 and SmolVLM: the same architecture, tokens and processor layout."""
    specials = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", "<|begin_of_text|>"]
    specials += [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tok = tiny_tokenizer(specials, bos="<|begin_of_text|>", eos="<end_of_utterance>", pad="<pad>",
                         chat_template=IDEFICS3_TEMPLATE)
    config = config_cls(
        text_config=_llama_text(len(tok), tok),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        scale_factor=2, image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    # 32 px tiles, 8 px patches: 16 patches -> 4 image tokens per tile after the 2x pixel shuffle.
    image_processor = image_processor_cls(size={"longest_edge": 64}, max_image_size={"longest_edge": 32},
                                          do_image_splitting=True)
    processor = processor_cls(image_processor=image_processor, tokenizer=tok, image_seq_len=4,
                              chat_template=IDEFICS3_TEMPLATE, **processor_kw)
    return model_cls(config), processor


def build_idefics3(directory: Path):
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                              Idefics3Processor)

    return _idefics3_style(Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil,
                           Idefics3Processor)


def build_smolvlm(directory: Path):
    from transformers import (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil,
                              SmolVLMProcessor, SmolVLMVideoProcessor)

    # its processor requires a video processor (torchvision); videos reach SmolVLM as frames here
    video_processor = SmolVLMVideoProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    return _idefics3_style(SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessorPil,
                           SmolVLMProcessor, video_processor=video_processor)


def build_llava_onevision(directory: Path):
    from transformers import (LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration,
                              LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor, LlavaOnevisionVideoProcessor)

    specials = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tok = tiny_tokenizer(specials, bos="<|endoftext|>", eos="<|im_end|>", pad="<|endoftext|>",
                         chat_template=LLAVA_OV_TEMPLATE)
    config = LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", **_llama_text(len(tok), tok)),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=37,
                           num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                           vision_use_head=False),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]], vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, crop_size=None,
                                                      image_grid_pinpoints=[[32, 32], [32, 64], [64, 32], [64, 64]])
    # video frames 32x32: 16 patches, pooled 2x2 to 4 tokens per frame, plus one newline per video
    video_processor = LlavaOnevisionVideoProcessor(size={"height": 32, "width": 32})
    processor = LlavaOnevisionProcessor(image_processor=image_processor, tokenizer=tok,
                                        video_processor=video_processor, num_image_tokens=16,
                                        vision_feature_select_strategy="full", chat_template=LLAVA_OV_TEMPLATE,
                                        vision_aspect_ratio="anyres_max_9")
    return LlavaOnevisionForConditionalGeneration(config), processor


def build_gemma3(directory: Path):
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    specials = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
    tok = tiny_tokenizer(specials, bos="<bos>", eos="<eos>", pad="<pad>", chat_template=GEMMA3_TEMPLATE,
                         extra={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
                                "image_token": "<image_soft_token>"})
    text = _llama_text(len(tok), tok)
    text.update(head_dim=16, query_pre_attn_scalar=16, sliding_window=64, layer_types=["sliding_attention",
                                                                                        "full_attention"])
    config = Gemma3Config(
        text_config=text,
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8, vision_use_head=False),
        mm_tokens_per_image=4, boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"),
        image_token_index=tok.convert_tokens_to_ids("<image_soft_token>"),
    )
    image_processor = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tok, image_seq_length=4,
                                chat_template=GEMMA3_TEMPLATE)
    return Gemma3ForConditionalGeneration(config), processor


BUILDERS: dict[str, Callable] = {
    "qwen2_vl": build_qwen2_vl,
    "idefics3": build_idefics3,
    "smolvlm": build_smolvlm,
    "llava_onevision": build_llava_onevision,
    "gemma3": build_gemma3,
}


def build_tiny_hf(family: str, directory: Path, seed: int = 0) -> Path:
    """Build the tiny ``family`` model and its processor and save both to ``directory``."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    model, processor = BUILDERS[family](directory)
    model.eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
