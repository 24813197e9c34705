"""Any Hugging Face interleaved vision-language model, few-shot with image demonstrations.

``--model hf --model-arg path=DIR`` loads a local directory that ``AutoProcessor`` and
``AutoModelForImageTextToText`` (else ``AutoModelForCausalLM``) load: Idefics2/3, SmolVLM,
Qwen2-VL / Qwen2.5-VL, LLaVA-OneVision / LLaVA-NeXT-Interleave, Gemma 3 and their fine-tunes.
Nothing is fetched.

Prompts (see docs/hf.md):

- ``chat`` (default when the processor has a chat template): each demonstration is a user turn
  (its media, then its question stem) and an assistant turn (its answer); the query is the last
  user turn; ``apply_chat_template(..., add_generation_prompt=True)``.
- ``plain``: the interleaved text with the processor's image placeholder, each demonstration
  closed by ``chunk_sep``.

The ``prompt`` stored with each prediction is the exact text handed to the processor (which then
expands each image placeholder into the image's tokens). Family quirks live in :data:`FAMILIES`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from harness.errors import HarnessError
from harness.model import Model, by_shared_prompt, checkpoint_fingerprint
from harness.registry import register_model
from harness.types import GenerationConfig, Image, LoglikelihoodRequest, Prompt, Video
from harness.data.video import media_as_images

from . import hf_attention
from .hf_cache import KEY, MERGES, ByteLRU, CachedImageProcessor, nbytes
from .hf_features import image_features


@dataclass(frozen=True)
class HFOptions:
    """path: local model+processor directory (as save_pretrained writes it, or a hub snapshot).
    dtype: float32, bfloat16, float16 or auto (the config's); weights only, token ids never.
    device: cpu, cuda, cuda:1 ...; device_map: auto spreads a large model over the GPUs (needs accelerate).
    attn_implementation: eager, sdpa, sdpa_rows, flash_attention_2 ... (default: transformers' choice, and
        where that is sdpa, sdpa_rows: a left-padded batch keeps SDPA's causal fast path, models/hf_attention.py).
    trust_remote_code: run the checkpoint's own Python code (off by default).
    max_images: most images (video frames included) one prompt may hold; more is an error before the model loads.
    prompt_format: auto (chat if the processor has a chat template, else plain), chat or plain.
    system: a system prompt (chat format).
    chunk_sep: plain format: text closing each demonstration (generation stops there too).
    image_size: longest image side (pixels) the processor resizes to, for families that allow it.
    processor_args: image-processor settings, k=v;k=v (e.g. do_image_splitting=false;max_pixels=200704).
    video_as_frames: each video goes in as its frames, in order, as images (families with native video
        input, Qwen2-VL and LLaVA-OneVision, otherwise take it as a video; others need this to take video).
    cache_mb: bound (MiB) of the cache of decoded images and processed pixels; 0 disables it.
    feature_cache_mb: bound (MiB) of the cache of vision features per image (Idefics2/3, SmolVLM,
        Qwen2-VL, Qwen2.5-VL, Gemma 3); default a quarter of memory, at most 8 GiB; 0 disables it."""

    path: str = ""
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    device: str = "cpu"
    device_map: str = ""
    attn_implementation: str = ""
    trust_remote_code: bool = False
    max_images: int | None = None
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    system: str = ""
    chunk_sep: str = "\n"
    image_size: int | None = None
    processor_args: str = ""
    video_as_frames: bool = False
    cache_mb: int = 512
    feature_cache_mb: float | None = None

    def __post_init__(self) -> None:
        if self.cache_mb < 0:
            raise HarnessError(f"model hf: cache_mb={self.cache_mb}: must be >= 0 (0 disables the cache)")
        if self.feature_cache_mb is not None and self.feature_cache_mb < 0:
            raise HarnessError(f"model hf: feature_cache_mb={self.feature_cache_mb}: must be >= 0 (0 disables it)")
        if self.max_images is not None and self.max_images < 1:
            raise HarnessError(f"model hf: max_images={self.max_images}: must be >= 1")
        if self.image_size is not None and self.image_size <= 0:
            raise HarnessError(f"model hf: image_size={self.image_size}: must be positive")
        if self.system and self.prompt_format == "plain":
            raise HarnessError("model hf: system=... is a chat-format system prompt, and prompt_format=plain has no "
                               "place for it; drop system, or use prompt_format=chat")


# ---- family hooks ----------------------------------------------------------------------------
def _longest_edge(image_processor: Any, n: int) -> dict[str, Any]:
    return {"size": {"longest_edge": n}}


def _qwen_pixels(image_processor: Any, n: int) -> dict[str, Any]:
    """Qwen2-VL bounds the pixel count (size.shortest_edge/longest_edge are min/max pixels)."""
    low = image_processor.size.shortest_edge or n * n
    return {"size": {"shortest_edge": min(low, n * n), "longest_edge": n * n}}


@dataclass(frozen=True)
class Family:
    """What differs between model families, keyed by ``config.model_type``.

    placeholder:  text the plain format writes per image (None: the processor's ``image_token``).
    end_of_turn:  token closing an assistant turn, an extra stop token (None: found from the chat template).
    image_size:   processor settings for ``image_size=N`` (None: the family has a fixed input size).
    video:        text the plain format writes per video, for families that take video natively
                  (``videos=`` to the processor, ``{"type": "video"}`` in chat); None: frames as images.
    """

    placeholder: str | None = None
    end_of_turn: str | None = None
    image_size: Callable[[Any, int], dict[str, Any]] | None = None
    video: str | None = None


FAMILIES: dict[str, Family] = {
    # Qwen's rope indexing finds each image by its <|vision_start|>: the bare pad token is not enough.
    "qwen2_vl": Family("<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>", _qwen_pixels,
                       "<|vision_start|><|video_pad|><|vision_end|>"),
    "qwen2_5_vl": Family("<|vision_start|><|image_pad|><|vision_end|>", "<|im_end|>", _qwen_pixels,
                         "<|vision_start|><|video_pad|><|vision_end|>"),
    "idefics3": Family("<image>", "<end_of_utterance>", _longest_edge),
    "smolvlm": Family("<image>", "<end_of_utterance>", _longest_edge),
    "idefics2": Family("<image>", "<end_of_utterance>", _longest_edge),
    "llava_onevision": Family("<image>", "<|im_end|>", video="<video>"),
    "llava_next": Family("<image>"),
    "gemma3": Family("<start_of_image>", "<end_of_turn>"),
}
DEFAULT_FAMILY = Family()


def _parse_processor_args(text: str) -> dict[str, Any]:
    import json

    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in text.split(";"))):
        if "=" not in item:
            raise HarnessError(f"model hf option processor_args: {item!r} is not key=value (separate items with ;)")
        key, value = (s.strip() for s in item.split("=", 1))
        try:
            out[key] = json.loads(value.lower() if value.lower() in ("true", "false", "null") else value)
        except ValueError:
            out[key] = value
    return out


@register_model("hf")
class HF(Model):
    """Any Hugging Face vision-language model (AutoModelForImageTextToText) from a local directory."""
    checkpoint_option = "path"  # what `watch` sets to each checkpoint folder

    Options = HFOptions
    template_style = "flamingo"
    # cache bounds never change an output (README): outside the identity
    runtime_options = frozenset({"cache_mb", "feature_cache_mb"})

    def __init__(self, options=None, *, model=None, processor=None):
        super().__init__(options)
        import torch

        self.torch = torch
        o = self.options
        if model is not None:  # in memory (HF.from_objects): its weights are its identity
            if processor is None or getattr(model, "config", None) is None:
                raise HarnessError("HF.from_objects: give a transformers model (with .config) and its processor")
            self.path = None
            self.where = f"model hf (in-memory {type(model).__name__})"
            self.hf_config = model.config
        else:
            path = Path(o.path) if o.path else None
            if path is None or not (path / "config.json").is_file():
                raise HarnessError(
                    f"model hf: --model-arg path={o.path or '(none)'} is not a model directory (no config.json); give a "
                    f"local directory with the config, weights and processor files, as save_pretrained writes them")
            self.path = path
            self.where = f"model hf ({path})"
            self.hf_config = self._load_config()
        self.family = FAMILIES.get(self.hf_config.model_type, DEFAULT_FAMILY)
        # a shallow copy: the image-processor cache below wraps the copy's, never the caller's processor
        self.processor = copy.copy(processor) if model is not None else self._load_processor()
        self._check_takes_images()
        self.tokenizer = self.processor.tokenizer
        self._apply_image_settings()
        self.format = self._pick_format()
        self.model = model.eval() if model is not None else self._load_model()
        self._stop_ids = self._stop_token_ids()
        import inspect

        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        # native video: the family has a hook, the processor a video processor, and the user did not opt out
        self._native_video = (self.family.video is not None and not o.video_as_frames
                              and getattr(self.processor, "video_processor", None) is not None)
        if self._native_video:
            self.media_kinds = frozenset({"image", "video"})
        if model is not None:
            from harness.store.identity import state_dict_digest

            self._fingerprint = "state-" + state_dict_digest(model, self.hf_config.to_json_string())
        else:
            self._fingerprint = checkpoint_fingerprint(self.path)
        self._cache = ByteLRU(o.cache_mb << 20, nbytes)
        self._features = image_features(self.model, self.processor.image_processor, self.hf_config.model_type,
                                        o.feature_cache_mb, self.fingerprint)
        merge = MERGES.get(self.hf_config.model_type)
        if merge is not None and o.cache_mb > 0:
            self.processor.image_processor = CachedImageProcessor(self.processor.image_processor, merge, self._cache)

    @classmethod
    def from_objects(cls, model, processor, **options) -> "HF":
        """An adapter around an in-memory transformers model and its processor (e.g. during
        training): no save or reload. Its identity is a digest of the model's state dict (and
        config), computed here once; the model is put in eval mode. ``options`` as --model-arg
        (``path`` is recorded as ``in-memory``; ``device`` defaults to the model's)."""
        options.setdefault("path", "in-memory")
        options.setdefault("device", str(getattr(model, "device", "cpu")))
        return cls(options, model=model, processor=processor)

    # ---- loading --------------------------------------------------------------------------
    def _load_config(self):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(self.path), trust_remote_code=self.options.trust_remote_code)
        except ValueError as exc:
            hint = "" if self.options.trust_remote_code else "; if it ships its own code, add trust_remote_code=true"
            raise HarnessError(f"{self.where}: transformers cannot read its config.json ({exc}){hint}") from None

    def _load_processor(self):
        from transformers import AutoProcessor

        try:
            return AutoProcessor.from_pretrained(str(self.path), trust_remote_code=self.options.trust_remote_code)
        except (OSError, ImportError, ValueError, TypeError, AttributeError) as exc:
            raise HarnessError(f"{self.where}: AutoProcessor cannot load it ({exc})") from None

    def _check_takes_images(self) -> None:
        if getattr(self.processor, "image_processor", None) is None:
            raise HarnessError(
                f"{self.where}: this {self.hf_config.model_type} model takes no images (its processor has no image "
                f"processor); give the directory of a vision-language model")

    def _apply_image_settings(self) -> None:
        """image_size and processor_args, checked, then set on the image processor (so saved configs
        and every call see them)."""
        o = self.options
        kwargs = _parse_processor_args(o.processor_args)
        ip = self.processor.image_processor
        for key in kwargs:
            if not hasattr(ip, key):
                raise HarnessError(f"model hf option processor_args: {type(ip).__name__} has no setting {key!r}")
        if o.image_size is not None:
            if self.family.image_size is None:
                raise HarnessError(
                    f"{self.where}: {self.hf_config.model_type} has a fixed image size; image_size is not supported "
                    f"(processor_args sets its processor's own settings)")
            kwargs = {**self.family.image_size(ip, o.image_size), **kwargs}
        from transformers.image_utils import SizeDict

        for key, value in kwargs.items():
            if isinstance(getattr(ip, key, None), SizeDict) and isinstance(value, dict):
                value = SizeDict(**value)
            setattr(ip, key, value)

    def _pick_format(self) -> str:
        has_template = bool(getattr(self.processor, "chat_template", None) or self.tokenizer.chat_template)
        fmt = self.options.prompt_format
        if fmt == "auto":
            fmt = "chat" if has_template else "plain"
            if fmt == "plain" and self.options.system:
                raise HarnessError(f"{self.where}: system=... needs the chat format, and its processor has no chat "
                                   f"template (prompt_format=auto chose plain); drop system")
            return fmt
        if fmt == "chat" and not has_template:
            raise HarnessError(f"{self.where}: prompt_format=chat needs a chat template, and its processor has none; "
                               f"use prompt_format=plain")
        return fmt

    def _load_model(self):
        import transformers
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

        torch, o = self.torch, self.options
        kw: dict[str, Any] = {"trust_remote_code": o.trust_remote_code,
                              "dtype": "auto" if o.dtype == "auto" else getattr(torch, o.dtype)}
        if o.attn_implementation:
            if o.attn_implementation == hf_attention.NAME:
                hf_attention.register()
            kw["attn_implementation"] = o.attn_implementation
        if o.device_map:
            import importlib.util

            if importlib.util.find_spec("accelerate") is None:
                raise HarnessError(f"{self.where}: device_map={o.device_map} needs the accelerate package "
                                   f"(pip install accelerate), or use device=cuda for one GPU")
            kw["device_map"] = o.device_map
        loaders = [AutoModelForImageTextToText]
        if hasattr(transformers, "AutoModelForVision2Seq"):
            loaders.append(transformers.AutoModelForVision2Seq)
        loaders.append(AutoModelForCausalLM)
        errors = []
        for loader in loaders:
            try:
                model = loader.from_pretrained(str(self.path), **kw)
                break
            except ValueError as exc:  # the family is not registered with this auto class
                errors.append(f"{loader.__name__}: {str(exc).splitlines()[0]}")
            except ImportError as exc:
                raise HarnessError(f"{self.where}: loading needs a missing package ({exc})") from None
        else:
            raise HarnessError(f"{self.where}: no auto class loads {self.hf_config.model_type} "
                               f"({'; '.join(errors)}); check transformers' version or trust_remote_code")
        if not o.device_map:
            model.to(self.device)  # this rank's device: cuda -> cuda:$LOCAL_RANK, auto -> cuda or cpu
        if not o.attn_implementation:
            hf_attention.use_row_attention(model)  # padded batches as fast per prompt as one prompt
        return model.eval()

    def _stop_token_ids(self) -> list[int]:
        """End-of-sequence ids plus the token that closes an assistant turn."""
        ids = self.model.generation_config.eos_token_id
        out = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
        if self.tokenizer.eos_token_id is not None:
            out.append(self.tokenizer.eos_token_id)
        end = self.family.end_of_turn or (self._probe_end_of_turn() if self.format == "chat" else None)
        if end is not None:
            tid = self.tokenizer.convert_tokens_to_ids(end)
            if tid is not None and tid != self.tokenizer.unk_token_id:
                out.append(tid)
        return list(dict.fromkeys(out))

    def _probe_end_of_turn(self) -> str | None:
        """The first special token after an assistant answer, as the chat template writes it."""
        probe = "zqzq"
        text = self._apply_template([{"role": "user", "content": [{"type": "text", "text": "hi"}]},
                                     {"role": "assistant", "content": [{"type": "text", "text": probe}]}], False)
        tail = text[text.rfind(probe) + len(probe):]
        for tok in self.tokenizer.all_special_tokens + list(self.tokenizer.get_added_vocab()):
            if tail.lstrip().startswith(tok):
                return tok
        return None

    @classmethod
    def check_prompt_images(cls, options: HFOptions, n_images: int, where: str) -> None:
        """max_images, checked before the model loads (harness.evaluation.validate)."""
        _check_max_images(options, n_images, f"model hf ({options.path})", where)

    def stats(self) -> dict[str, int]:
        """Cumulative counters: decoded-image/pixel cache and vision-feature cache (hits, encodes)."""
        out = {"media_cache_hits": self._cache.hits, "media_cache_misses": self._cache.misses}
        if self._features is not None:
            out.update(self._features.cache.stats())
        return out

    # ---- prompts --------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return f"hf-{self.hf_config.model_type}-{self._fingerprint}"

    def config(self) -> dict[str, Any]:
        out = super().config()
        out.update(model_type=self.hf_config.model_type, prompt_format=self.format,
                   video="native" if self._native_video else "frames")
        return out

    def _apply_template(self, messages: list[dict], add_generation_prompt: bool) -> str:
        # Some checkpoints keep the chat template with the tokenizer only.
        owner = self.processor if getattr(self.processor, "chat_template", None) else self.tokenizer
        return owner.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _messages(self, prompt: Prompt) -> list[dict]:
        """Chat turns: per demo a user turn (media, stem) and an assistant turn (answer); the query last."""
        msgs: list[dict] = []
        if self.options.system:
            msgs.append({"role": "system", "content": [{"type": "text", "text": self.options.system}]})
        for chunk in prompt.demos:
            if chunk.answer is None:
                raise HarnessError(
                    f"{self.where}: prompt_format=chat splits each demo into question and answer, but the task's "
                    f"template does not end with the answer ({chunk.text!r}); use prompt_format=plain")
            msgs.append(self._user_turn(chunk.media, chunk.stem))
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": chunk.answer.strip()}]})
        msgs.append(self._user_turn(prompt.query.media, prompt.query.text))
        return msgs

    def _user_turn(self, media: Sequence, text: str) -> dict:
        content = [{"type": kind} for m in media for kind in self._kinds(m)]
        return {"role": "user", "content": content + [{"type": "text", "text": text.strip()}]}

    def _kinds(self, media) -> list[str]:
        """What a media item goes in as: an image, a video (native), or a video's frames as images."""
        if not isinstance(media, Video):
            return ["image"]
        return ["video"] if self._native_video else ["image"] * len(self._decoded(media))

    def _placeholder(self, kind: str = "image") -> str:
        token = self.family.video if kind == "video" else (
            self.family.placeholder or getattr(self.processor, "image_token", None))
        if not token:
            raise HarnessError(f"{self.where}: its processor names no image token; use prompt_format=chat")
        return token

    def render_prompt(self, prompt: Prompt) -> str:
        """The exact text handed to the processor (before it expands each image placeholder)."""
        if self.format == "chat":
            return self._apply_template(self._messages(prompt), True)
        parts = []
        for i, chunk in enumerate(prompt.chunks):
            sep = self.options.chunk_sep if i < len(prompt.chunks) - 1 else ""
            media = "".join(self._placeholder(k) for m in chunk.media for k in self._kinds(m))
            parts.append(media + chunk.text + sep)
        return "".join(parts)

    # ---- media ----------------------------------------------------------------------------
    def _decoded(self, media) -> list:
        """An image, or a video's frames, decoded once (then cached), each tagged with its cache key."""
        key = media.identity if isinstance(media, Image) else f"{media.identity}\0{getattr(media, 'selection', None)}"
        return self._cache.get(("decoded", key), lambda: self._decode(media, key))

    def _decode(self, media, key: str) -> list:
        # a video is refused (naming video_as_frames) only where it can go in neither natively nor as frames
        takes_video = self._native_video or self.options.video_as_frames
        images = media_as_images([media], takes_video, f"model {self.name}")
        if isinstance(media, Video):  # frames: their own objects, their own keys
            images = [im.copy() for im in images]
        for i, im in enumerate(images):
            im.info[KEY] = key if not isinstance(media, Video) else f"{key}\0frame {i}"
        return images

    def _prompt_media(self, prompt: Prompt) -> tuple[list, list[list]]:
        """The prompt's images (videos as frames included) and native videos (each its frames), in order."""
        images, videos = [], []
        for m in prompt.media:
            (videos.append if "video" in self._kinds(m) else images.extend)(self._decoded(m))
        _check_max_images(self.options, len(images) + sum(map(len, videos)), self.where)
        return images, videos

    def _process(self, texts: list[str], media: list[tuple[list, list[list]]], **kw: Any):
        """The processor on texts and their (images, videos), tensors on the CPU."""
        images = [i for i, _ in media]
        videos = [v for _, vs in media for v in vs]
        if any(images):
            kw["images"] = images
        if videos:  # the task chose the frames: a checkpoint's own frame sampling must not pick again
            kw.update(videos=videos, do_sample_frames=False)
        return self.processor(text=texts, return_tensors="pt", **kw)

    def _inputs(self, texts: list[str], media: list[tuple[list, list[list]]], padding_side: str):
        """Processor outputs on the model's device, pixels in the model's dtype; cached vision features
        (``mm_encoder_outputs``) instead of image pixels where the family allows it."""
        inputs = self._process(texts, media, padding=True, padding_side=padding_side)
        dev = self.model.device
        out = {}
        for k, v in inputs.items():
            if hasattr(v, "to"):
                v = v.to(dev)
                if v.is_floating_point():
                    v = v.to(self.model.dtype)
            out[k] = v
        images = [im for i, _ in media for im in i]
        # native videos keep their pixels: a model takes either pixels or encoder outputs, not both
        if self._features is not None and images and not any(vs for _, vs in media):
            out = {k: v for k, v in out.items() if not k.startswith("pixel_")}
            out["mm_encoder_outputs"] = self._features.encoder_outputs(images)
        return out

    # ---- what the model sees: token counts ---------------------------------------------------
    def context_length(self) -> int | None:
        text = getattr(self.hf_config, "text_config", None) or self.hf_config
        n = getattr(text, "max_position_embeddings", None) or getattr(self.hf_config, "max_position_embeddings", None)
        return int(n) if n else None

    def prompt_length(self, prompt: Prompt) -> tuple[int, int] | None:
        """Tokens and image/video tokens of the prompt's input ids: as ``generate`` gave them to the model
        (remembered per rendered prompt), else from the processor itself, past the image cache (a
        check must not warm it), so a family's image-token expansion is counted as the model gets it."""
        text = self.render_prompt(prompt)
        lengths = self.__dict__.setdefault("_lengths", {})
        if text in lengths:
            return lengths[text]
        image_processor = self.processor.image_processor
        self.processor.image_processor = getattr(image_processor, "_inner", image_processor)
        try:
            ids = self._process([text], [self._prompt_media(prompt)])["input_ids"][0]
        finally:
            self.processor.image_processor = image_processor
        return int(ids.shape[0]), self._media_tokens(ids)

    def _remember_lengths(self, texts: list[str], inputs: dict[str, Any]) -> None:
        """Each generated prompt's (tokens, media tokens) as the model got them (padding left out)."""
        lengths = self.__dict__.setdefault("_lengths", {})  # rendered prompt -> (tokens, media tokens)
        mask = inputs.get("attention_mask")
        for i, text in enumerate(texts):
            ids = inputs["input_ids"][i]
            if mask is not None:
                ids = ids[mask[i].bool()]
            if len(lengths) >= 8192:  # bounded: records read them right after their batch
                lengths.pop(next(iter(lengths)))
            lengths[text] = (int(ids.shape[0]), self._media_tokens(ids))

    def _media_tokens(self, ids) -> int:
        media_ids = set()
        for attr in ("image_token_id", "video_token_id"):
            tid = getattr(self.processor, attr, None)
            if tid is None:
                tok = getattr(self.processor, attr.replace("_id", ""), None)
                tid = self.tokenizer.convert_tokens_to_ids(tok) if isinstance(tok, str) else None
            if isinstance(tid, int) and tid != self.tokenizer.unk_token_id:
                media_ids.add(tid)
        return sum(int((ids == t).sum()) for t in media_ids)

    # ---- generation -----------------------------------------------------------------------
    def generate_batch(self, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[str]:
        torch = self.torch
        texts = [self.render_prompt(p) for p in prompts]
        media = [self._prompt_media(p) for p in prompts]
        inputs = self._inputs(texts, media, "left")
        self._remember_lengths(texts, inputs)
        stop: dict[str, Any] = {}
        if self.format == "plain" and self.options.chunk_sep:
            stop = {"stop_strings": [self.options.chunk_sep], "tokenizer": self.tokenizer}
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens,
                num_beams=cfg.num_beams,
                **({"length_penalty": cfg.length_penalty} if cfg.num_beams > 1 else {}),
                do_sample=False,
                eos_token_id=self._stop_ids,
                pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                else self._stop_ids[0],
                **stop,
            )
        new = out[:, inputs["input_ids"].shape[1]:]
        return [t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True)]

    # ---- close-ended scoring --------------------------------------------------------------
    def _continuation_text(self, prompt: Prompt, context: str, continuation: str) -> str:
        """What a candidate adds after the context, written as the demos write their answers: for chat,
        the assistant turn as the template renders it (e.g. Idefics3's leading space), up to the answer's end."""
        if self.format == "plain":
            return continuation
        answer = continuation.strip()
        msgs = self._messages(prompt) + [{"role": "assistant", "content": [{"type": "text", "text": answer}]}]
        full = self._apply_template(msgs, False)
        if full.startswith(context):
            end = full.find(answer, len(context))
            if end >= 0:
                return full[len(context): end + len(answer)]
        return answer

    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float]:
        """Sum of the continuation tokens' log-probabilities after each prompt (after the assistant
        prefix, in chat format). Candidates of one prompt go through the model in one right-padded
        batch, so padding never shifts a scored token."""
        return by_shared_prompt(requests, self._score)

    def _score(self, prompt: Prompt, continuations: Sequence[str]) -> list[float]:
        torch = self.torch
        context = self.render_prompt(prompt)
        media = self._prompt_media(prompt)
        fulls = [context + self._continuation_text(prompt, context, c) for c in continuations]
        ctx_ids = self._process([context], [media])["input_ids"][0].tolist()
        inputs = self._inputs(fulls, [media] * len(fulls), "right")
        rows, starts = [], []
        for row in range(len(fulls)):
            ids = inputs["input_ids"][row][inputs["attention_mask"][row].bool()].tolist()
            # Where the candidate merges with the context's last token, that token is scored too.
            start = 0
            while start < min(len(ids), len(ctx_ids)) and ids[start] == ctx_ids[start]:
                start += 1
            rows.append(ids)
            starts.append(max(start, 1))
        # Logits only from the first scored position on: a full (batch, length, vocab) tensor of a
        # 150k-word model over a many-shot prompt would take gigabytes.
        length = inputs["input_ids"].shape[1]
        first = min(starts) - 1
        extra = {"logits_to_keep": length - first} if self._keeps_logits else {}
        with torch.inference_mode():
            logits = self.model(**inputs, **extra).logits
        offset = length - logits.shape[1]
        scores = []
        for row, (ids, start) in enumerate(zip(rows, starts)):
            logp = logits[row, start - 1 - offset: len(ids) - 1 - offset].float().log_softmax(-1)
            scores.append(float(logp.gather(1, torch.tensor(ids[start:], device=logp.device)[:, None]).sum()))
        return scores


def _check_max_images(o: HFOptions, n_images: int = 0, where: str = "", prompt: str = "") -> None:
    if o.max_images is not None and n_images > o.max_images:
        at = f" ({prompt})" if prompt else ""
        raise HarnessError(
            f"{where}: a prompt{at} holds {n_images} images (video frames count), more than max_images="
            f"{o.max_images}; use fewer --shots (or --frames), or raise --model-arg max_images")
