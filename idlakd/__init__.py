"""idlakd: a speech-synthesis server for Idlak (and eSpeak NG), over a REST API."""

__version__ = "0.1.0"
