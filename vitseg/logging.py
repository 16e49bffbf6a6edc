"""The `vitseg` logger: messages a user should see (weight-loading notices, training progress)."""
import logging
import sys

logger = logging.getLogger("vitseg")
if not logger.handlers:
    _handler = logging.StreamHandler(sys.stderr)
    _handler.setFormatter(logging.Formatter("[vitseg] %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
