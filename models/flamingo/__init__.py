"""A readable reference Flamingo (Alayrac et al. 2022), registered as model ``flamingo``.

- config.py     FlamingoConfig (JSON next to the weights)
- vision.py     vision encoders (local HF model or a small built-in conv net) and preprocessing
- resampler.py  Perceiver Resampler (learned latents, time embeddings for video frames)
- xattn.py      GATED XATTN-DENSE blocks and per-media masking
- model.py      FlamingoModel: encode_media, the language pass, generate, loglikelihood, save/load
- generation.py beam search over a KV cache
- tokenizer.py  a word-level tokenizer built locally (for the from-scratch checkpoint)
- data.py / train.py  training on easy-VQA as interleaved sequences
- adapter.py    the harness Model adapter (imported here; torch loads only when a model is built)
"""

from . import adapter  # noqa: F401
