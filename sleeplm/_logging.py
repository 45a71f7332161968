"""The one logger of the package."""

import logging

logger = logging.getLogger("sleeplm")
logger.addHandler(logging.NullHandler())
