"""A few-shot evaluation harness for Flamingo-style vision-language models.

Data flows one way: Task -> Sampler -> PromptBuilder -> Model -> Task.postprocess
-> Task.score/aggregate -> Store -> Report. See README.md and DESIGN.md.
"""

__version__ = "0.1.0"
