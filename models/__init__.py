"""Built-in model families; importing this package registers them."""

from models import clip_multimodal, hier_moe_rec, popularity, sasrec  # noqa: F401
