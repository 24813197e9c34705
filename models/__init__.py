"""Built-in model adapters, one module per model family; importing registers them.

Heavy imports (torch, transformers) happen when a model is constructed, not here,
so listing and scoring stay fast.
"""

from . import baselines, flamingo, hf, idefics, openflamingo, served  # noqa: F401
