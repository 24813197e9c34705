"""IDEFICS (``IdeficsForVisionText2Text`` in transformers), loaded from a local directory.

The directory holds what ``save_pretrained`` writes for the model and its
``IdeficsProcessor`` (config.json, model.safetensors, tokenizer and processor
files), e.g. a downloaded HuggingFaceM4/idefics-9b snapshot. Nothing is fetched.

Prompts follow IDEFICS's own evaluation: each demonstration is its image(s),
then ``Question: ... Answer: ...`` and a newline; the query ends with ``Answer:``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError
from harness.model import Model, by_shared_prompt, checkpoint_fingerprint
from harness.registry import register_model
from harness.types import GenerationConfig, LoglikelihoodRequest, Prompt
from harness.data.video import media_as_images

from . import hf_attention


@dataclass(frozen=True)
class IdeficsOptions:
    """path: local model+processor directory. device: cpu, cuda (this rank's GPU), auto, cuda:1 ...
    dtype: float32, bfloat16 or float16 (weights cast; token ids never are).
    chunk_sep: text closing each demonstration.
    video_as_frames: IDEFICS takes images only; with true, each video goes in as its frames, in order
    (each frame one image; text then attends to the last frame, IDEFICS's per-image masking).
    prefill_once: beam search prefills each prompt (and encodes its images) once and expands the KV
    cache and image features to the beams (false: Hugging Face expands the inputs first, so the
    prompt is prefilled once per beam)."""

    path: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    chunk_sep: str = "\n"
    video_as_frames: bool = False
    prefill_once: bool = True


@register_model("idefics")
class Idefics(Model):
    """IDEFICS (transformers IdeficsForVisionText2Text) from a local directory (--model-arg path=DIR)."""
    checkpoint_option = "path"  # what `watch` sets to each checkpoint folder

    Options = IdeficsOptions
    template_style = "flamingo"
    media_token = "<image>"

    def __init__(self, options=None):
        super().__init__(options)
        import torch
        from transformers import IdeficsForVisionText2Text, IdeficsProcessor

        path = Path(self.options.path) if self.options.path else None
        if path is None or not (path / "config.json").is_file():
            raise HarnessError(
                f"model idefics needs --model-arg path=DIR, a local directory with config.json, the weights and "
                f"the processor files (as save_pretrained writes them); got {self.options.path!r}"
            )
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if self.options.dtype not in dtypes:
            raise HarnessError(f"model idefics: dtype must be one of {', '.join(dtypes)}, not {self.options.dtype!r}")
        self.torch = torch
        self.processor = IdeficsProcessor.from_pretrained(str(path))
        self.processor.tokenizer.padding_side = "left"
        self.model = IdeficsForVisionText2Text.from_pretrained(str(path), dtype=dtypes[self.options.dtype])
        self.model.to(self.device).eval()
        hf_attention.use_row_attention(self.model)  # padded batches keep SDPA's causal fast path
        self._fingerprint = checkpoint_fingerprint(path)

    @property
    def fingerprint(self) -> str:
        return f"idefics-{self._fingerprint}"

    def render_prompt(self, prompt: Prompt) -> str:
        return prompt.render(self.media_token, self.options.chunk_sep)

    def _items(self, prompt: Prompt) -> list:
        """The processor's interleaved list: PIL images and strings."""
        items: list = []
        chunks = prompt.chunks
        for i, chunk in enumerate(chunks):
            items.extend(media_as_images(chunk.media, self.options.video_as_frames, f"model {self.name}"))
            items.append(chunk.text + (self.options.chunk_sep + prompt.separator if i < len(chunks) - 1 else ""))
        return items

    def generate_batch(self, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[str]:
        torch = self.torch
        inputs = self.processor(text=[self._items(p) for p in prompts], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        if inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            if self.options.prefill_once and inputs["input_ids"].shape[1] > 1:
                inputs = self._prefill(inputs, cfg.num_beams)
            out = self.model.generate(
                **inputs,
                max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens,
                num_beams=cfg.num_beams,
                length_penalty=cfg.length_penalty,
                do_sample=False,
                # Stop at the end of the chunk, as demos end (OpenFlamingo stops at <|endofchunk|>).
                stop_strings=[self.options.chunk_sep] if self.options.chunk_sep else None,
                tokenizer=self.processor.tokenizer,
            )
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)

    def _prefill(self, inputs: dict, num_beams: int) -> dict:
        """Run all but the last prompt token once per prompt; return ``generate`` inputs that continue
        from that KV cache (repeated for the beams) and the images' resampled features (which
        ``generate`` repeats for the beams), instead of the pixels."""
        ids, mask, img_mask = inputs["input_ids"], inputs["attention_mask"], inputs["image_attention_mask"]
        # the positions generate derives from the full mask (padding at 0)
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        first = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1],
                           pixel_values=inputs["pixel_values"], image_attention_mask=img_mask[:, :-1], use_cache=True,
                           logits_to_keep=1)
        cache = first.past_key_values
        if num_beams > 1:
            cache.batch_repeat_interleave(num_beams)
        rest = {k: v for k, v in inputs.items() if k != "pixel_values"}
        return {**rest, "past_key_values": cache, "image_hidden_states": first.image_hidden_states}

    # ---- close-ended scoring ------------------------------------------------------
    def loglikelihood(self, requests: Sequence[LoglikelihoodRequest]) -> list[float]:
        """Sum of the continuation tokens' log-probabilities after each prompt.

        Requests that share a prompt (the candidates of one query, one demo order)
        are scored together: the prompt, images included, is encoded once with a
        KV cache, then every candidate continues from that cache in one batch.
        Continuations are right-padded after the shared context with explicit
        position ids, so padding never reaches a scored token: a request's score
        does not depend on what else is in the batch.
        """
        return by_shared_prompt(requests, self._score_shared)

    def _continuation_tokens(self, prompt: Prompt, ctx_ids: list[int], conts: Sequence[str]):
        """(tokens of the context to keep, per candidate: tokens to feed after it, index of the first scored one).

        The query text is tokenised after an image marker, as the processor does it
        (special tokens split the text there), with and without each candidate; where
        a candidate merges with the end of the stem, the stem's last tokens move into
        the fed part and are not scored.
        """
        tok = self.processor.tokenizer
        lead = "<fake_token_around_image>" if prompt.query.media else ""
        n_lead = len(tok(lead, add_special_tokens=False)["input_ids"]) if lead else 0
        stem_text = prompt.query.text.strip(" ")
        stem = tok(lead + stem_text, add_special_tokens=False)["input_ids"][n_lead:]
        if not lead or ctx_ids[-len(stem):] != stem:
            raise HarnessError(
                f"model {self.name}: cannot split the query {stem_text!r} from the prompt's tokens "
                f"(loglikelihood needs the query to start with its media)")
        fulls = [tok(lead + (stem_text + c).strip(" "), add_special_tokens=False)["input_ids"][n_lead:] for c in conts]
        lcps = []
        for f in fulls:
            n = 0
            while n < min(len(f), len(stem)) and f[n] == stem[n]:
                n += 1
            lcps.append(n)
        keep = min(lcps)
        n_ctx = len(ctx_ids) - (len(stem) - keep)
        return n_ctx, [(f[keep:], lcp - keep) for f, lcp in zip(fulls, lcps)]

    def _score_shared(self, prompt: Prompt, conts: Sequence[str]) -> list[float]:
        torch = self.torch
        dev = self.device
        ctx = self.processor(text=[self._items(prompt)], return_tensors="pt")
        n_ctx, feeds = self._continuation_tokens(prompt, ctx["input_ids"][0].tolist(), conts)
        ids = ctx["input_ids"][:, :n_ctx].to(dev)
        img_mask = ctx["image_attention_mask"][:, :n_ctx].to(dev)
        pixels = ctx["pixel_values"].to(dev, self.model.dtype)
        with torch.inference_mode():
            first = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=pixels,
                               image_attention_mask=img_mask, use_cache=True)
            first_logp = first.logits[0, -1].float().log_softmax(-1)
            n = len(feeds)
            width = max(len(f) for f, _ in feeds) - 1  # the last fed token predicts nothing scored
            rest_logp = None
            if width > 0:
                pad = self.processor.tokenizer.pad_token_id or 0
                x = torch.full((n, width), pad, dtype=torch.long)
                x_mask = torch.zeros((n, width), dtype=torch.long)
                for row, (f, _) in enumerate(feeds):
                    x[row, : len(f) - 1] = torch.tensor(f[:-1])
                    x_mask[row, : len(f) - 1] = 1
                cache = first.past_key_values
                cache.batch_repeat_interleave(n)
                images = first.image_hidden_states
                images = images.reshape(1, -1, *images.shape[-2:]).expand(n, -1, -1, -1).contiguous()
                key = "perceiver_embeddings" if self.model.config.use_resampler else "image_encoder_embeddings"
                rest = self.model(
                    input_ids=x.to(dev),
                    attention_mask=torch.cat([torch.ones((n, n_ctx), dtype=torch.long), x_mask], 1).to(dev),
                    position_ids=(n_ctx + torch.arange(width)).unsqueeze(0).expand(n, -1).to(dev),
                    past_key_values=cache,
                    image_attention_mask=img_mask[:, -1:].expand(n, width, -1),
                    use_cache=False,
                    **{key: images},
                )
                rest_logp = rest.logits.float().log_softmax(-1)
        scores = []
        for row, (f, start) in enumerate(feeds):
            total = 0.0
            for j in range(start, len(f)):
                logp = first_logp if j == 0 else rest_logp[row, j - 1]
                total += float(logp[f[j]])
            scores.append(total)
        return scores
