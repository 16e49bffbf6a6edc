"""Segmentation models (decoder + the encoder they sit on). Importing registers every model."""
from . import segformer  # noqa: F401
from . import linear  # noqa: F401
