"""Built-in tasks, one module per benchmark family; importing registers them."""

from . import captioning, vqa  # noqa: F401
