"""Built-in tasks, one module per benchmark family; importing registers them."""

from . import captioning, classification, rareact, video_captioning, video_qa, vqa  # noqa: F401
