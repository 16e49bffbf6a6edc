"""Encoders. Importing this package registers every backbone."""
from . import beit, cswin, mit, resnetv2, vit  # noqa: F401
