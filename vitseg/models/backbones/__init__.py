"""Encoders. Importing this package registers every backbone."""
from . import mit  # noqa: F401
from . import beit, cswin  # noqa: F401
