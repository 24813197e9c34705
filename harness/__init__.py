"""A few-shot evaluation harness for Flamingo-style vision-language models.

Data flows one way: Task -> Sampler -> PromptBuilder -> Model -> Task.postprocess
-> Task.score/aggregate -> Store -> Report. See README.md and DESIGN.md.
"""

__version__ = "0.1.0"


def evaluate(*args, **kwargs):
    """Evaluate a model from Python and return the tidy results: see :func:`harness.api.evaluate`."""
    from harness.api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)
