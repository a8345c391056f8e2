"""WebM Opus from /speech plays through Media Source Extensions in a real browser (Debian's chromium).

Fails (never skips) when chromium or Playwright is missing: CI installs both.
"""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from idlakd.synth import wav
from idlakd.web.app import create_app
from tests.helpers.app import make_config

CHROMIUM = Path(os.environ.get("IDLAKD_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]
TEXT = "The quick brown fox jumps over the lazy dog. Then it sleeps."

# Appends the stream to a SourceBuffer in 4 KiB pieces, as it would arrive, and reports what
# the browser buffered: [ranges, start, end] in seconds, or why it refused.
MSE_SCRIPT = """async ([b64, type]) => {
  if (!MediaSource.isTypeSupported(type)) return 'unsupported: ' + type;
  const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
  const source = new MediaSource();
  const audio = document.createElement('audio');
  audio.src = URL.createObjectURL(source);
  await new Promise(resolve => source.addEventListener('sourceopen', resolve, {once: true}));
  const buffer = source.addSourceBuffer(type);
  for (let i = 0; i < bytes.length; i += 4096) {
    buffer.appendBuffer(bytes.slice(i, i + 4096));
    await new Promise((resolve, reject) => {
      buffer.addEventListener('updateend', resolve, {once: true});
      buffer.addEventListener('error', () => reject(new Error('append failed at ' + i)),
                              {once: true});
    });
  }
  source.endOfStream();
  return [buffer.buffered.length, buffer.buffered.start(0), buffer.buffered.end(0)];
}"""


async def _answers(tmp_path: Path) -> dict[str, tuple[str, bytes]]:
    """The streamed webm and the complete wav of TEXT from the real app."""
    app = create_app(make_config(tmp_path, authorization="false"))
    answers = {}
    async with TestClient(TestServer(app)) as client:
        for audio_format, stream in (("webm", True), ("wav", False)):
            resp = await client.post("/speech", json={"voice_id": "alba", "text": TEXT,
                                                      "audio_format": audio_format,
                                                      "stream": stream})
            assert resp.status == 200
            answers[audio_format] = (resp.headers["Content-Type"], await resp.read())
    return answers


def test_streamed_webm_plays_through_media_source(tmp_path: Path) -> None:
    """Chromium takes the streamed WebM piece by piece into one buffered range as long as the WAV."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    from playwright.sync_api import sync_playwright

    answers = asyncio.run(_answers(tmp_path))
    content_type, webm = answers["webm"]
    info = wav.parse_wav(answers["wav"][1])
    seconds = info.data_size / 2 / info.sample_rate
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto("about:blank")
            result = page.evaluate(MSE_SCRIPT, [base64.b64encode(webm).decode(), content_type])
        finally:
            browser.close()
    assert isinstance(result, list), result
    ranges, start, end = result
    assert ranges == 1 and start == 0
    assert end == pytest.approx(seconds, abs=0.05)
