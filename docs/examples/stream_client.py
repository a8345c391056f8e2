"""Stream text to idlakd's /v1/speech/stream as an LLM writes it, and save the audio.

    python docs/examples/stream_client.py --url http://localhost:8080 --token idk_... \\
        --voice alba --out speech.wav

Needs only aiohttp (pip install aiohttp). The "LLM" here is a stand-in that writes a few
characters every 20 ms; put your model's token stream in its place. The audio comes as raw
16-bit PCM (audio_format pcm) and is saved as a WAV file; marks and events are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import wave
from typing import AsyncIterator

import aiohttp

ANSWER = ("Sure, here is a short answer. Streaming speech starts talking as soon as the first "
          "sentence is complete, while the rest of the text is still being written. "
          "That keeps a voice assistant quick to respond!")


async def llm_tokens(text: str) -> AsyncIterator[str]:
    """A stand-in for a language model's stream: 3-6 characters every 20 ms."""
    i = 0
    while i < len(text):
        size = random.randint(3, 6)
        yield text[i:i + size]
        i += size
        await asyncio.sleep(0.02)


async def send_text(ws: aiohttp.ClientWebSocketResponse, text: str) -> None:
    """Send the model's deltas, then end (the server speaks the rest, then says done)."""
    async for delta in llm_tokens(text):
        await ws.send_json({"type": "text", "text": delta})
    await ws.send_json({"type": "end"})


async def main() -> int:
    """Connect, start, stream, save; the exit status says whether it ended with done."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://localhost:8080")
    parser.add_argument("--token", default="", help="an access token or API key")
    parser.add_argument("--voice", default="alba")
    parser.add_argument("--text", default=ANSWER)
    parser.add_argument("--out", default="speech.wav")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    audio = bytearray()
    rate = 0
    done = False
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{args.url}/v1/speech/stream", headers=headers) as ws:
            await ws.send_json({"type": "start", "voice_id": args.voice, "audio_format": "pcm",
                                "marks": True})
            sender: asyncio.Task[None] | None = None
            async for msg in ws:
                if msg.type is aiohttp.WSMsgType.BINARY:
                    audio += msg.data
                    continue
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                event = json.loads(msg.data)
                if event["type"] == "started":
                    rate = event["sample_rate"]
                    sender = asyncio.create_task(send_text(ws, args.text))
                elif event["type"] == "mark" and event["mark"]["type"] == "sentence":
                    print(f"{event['mark']['time'] / 1000:6.2f} s  {event['mark']['value']}")
                elif event["type"] == "done":
                    done = True
                    print(f"done: {event['usage']}")
                elif event["type"] == "error":
                    print(f"error ({event['code']}): {event['message']}", file=sys.stderr)
            if sender is not None:
                sender.cancel()
    if rate:
        with wave.open(args.out, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(rate)
            out.writeframes(bytes(audio))
        print(f"{len(audio) / 2 / rate:.2f} s of audio saved to {args.out}")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
