"""Built-in tasks, one module per benchmark family; importing registers them."""

from . import vqa  # noqa: F401
