"""Built-in tasks, one module per benchmark family; importing registers them."""

from . import (captioning, classification, imagenet, kinetics, rareact,  # noqa: F401
               textvqa_vizwiz, video_captioning, video_qa, visdial, vqa)
