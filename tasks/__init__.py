"""Built-in tasks, one module per benchmark family; importing registers them."""

from . import captioning, classification, imagenet, textvqa_vizwiz, video_qa, visdial, vqa  # noqa: F401
