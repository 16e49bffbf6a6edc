"""Encoders. Importing this package registers every backbone."""
from . import mit  # noqa: F401
from . import vit, resnetv2  # noqa: F401
