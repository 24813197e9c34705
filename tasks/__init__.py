"""Built-in tasks, one module per benchmark family; importing registers them."""

from . import (captioning, classification, imagenet, rareact, textvqa_vizwiz,  # noqa: F401
               video_captioning, video_qa, visdial, vqa)
