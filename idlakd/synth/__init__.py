"""Speech synthesis: documents in, AudioStreams out, over pools of worker subprocesses (no HTTP here)."""
