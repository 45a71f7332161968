"""Read PSG files (EDF, EDF+, BDF) and their annotations into a Recording."""

from sleeplm.io.channels import CANONICAL_CHANNELS, canonical_channel
from sleeplm.io.reader import read_recording

__all__ = ["read_recording", "canonical_channel", "CANONICAL_CHANNELS"]
