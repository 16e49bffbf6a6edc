"""Encoders. Importing this package registers every backbone."""
from . import mit  # noqa: F401
