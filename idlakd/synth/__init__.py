"""Speech synthesis: worker subprocesses, their pipe protocol, engines, and the daemon-side pool."""
