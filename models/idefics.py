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
from harness.media import load_images
from harness.model import Model, checkpoint_fingerprint
from harness.registry import register_model
from harness.types import GenerateRequest, Prompt


@dataclass(frozen=True)
class IdeficsOptions:
    """path: local model+processor directory. device: cpu, cuda, cuda:1 ...
    dtype: float32, bfloat16 or float16 (weights cast; token ids never are).
    chunk_sep: text closing each demonstration."""

    path: str = ""
    device: str = "cpu"
    dtype: str = "float32"
    chunk_sep: str = "\n"


@register_model("idefics")
class Idefics(Model):
    """IDEFICS (transformers IdeficsForVisionText2Text) from a local directory (--model-arg path=DIR)."""

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
        self.model.to(self.options.device).eval()
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
            items.extend(load_images(chunk.media))
            items.append(chunk.text + (self.options.chunk_sep if i < len(chunks) - 1 else ""))
        return items

    def generate(self, requests: Sequence[GenerateRequest]) -> list[str]:
        torch = self.torch
        cfg = requests[0].config
        inputs = self.processor(text=[self._items(r.prompt) for r in requests], return_tensors="pt")
        inputs = {k: v.to(self.options.device) for k, v in inputs.items()}
        if inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens,
                num_beams=cfg.num_beams,
                length_penalty=cfg.length_penalty,
                do_sample=False,
            )
        new = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(new, skip_special_tokens=True)
