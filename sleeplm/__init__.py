"""sleeplm: read polysomnograms, measure them, caption and embed them with SleepLM."""

from sleeplm.recording import EventType, Recording, RecordingInfo, Signal

__version__ = "0.1.0"
__all__ = ["Recording", "RecordingInfo", "Signal", "EventType", "__version__"]
