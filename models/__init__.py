"""Built-in model families; importing this package registers them."""

from models import clip_multimodal  # noqa: F401
