"""/languages and /voices: discovery, filters, and their errors."""

from __future__ import annotations

import pytest

from typing import Any

from aiohttp.test_utils import TestClient

from tests.helpers.app import assert_error

# The same routes on both stores (SQLite and PostgreSQL).
pytestmark = pytest.mark.both_stores

VOICE_KEYS = {"voice_id", "id", "name", "language", "accent", "gender", "sample_rate", "engine"}


async def test_languages(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/languages")
    assert resp.status == 200
    languages = (await resp.json())["languages"]
    assert languages == sorted(set(languages))
    assert {"en", "ro", "fr", "de", "ru"} <= set(languages)


async def test_accents(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/languages/en/accents")
    assert await resp.json() == {"language": "en", "accents": ["gb", "us"]}
    await assert_error(await client.get("/languages/xx/accents"), 404,
                       "Language could not be found")


async def test_post_voices_lists_all_with_or_without_body(client: TestClient[Any, Any]) -> None:
    for kwargs in ({}, {"json": {}}, {"data": b""}):
        resp = await client.post("/voices", **kwargs)
        assert resp.status == 200
        voices = (await resp.json())["voices"]
        assert len(voices) >= 7
        for v in voices:
            assert set(v) == VOICE_KEYS
            assert v["voice_id"] == v["id"]
            assert "dir" not in v and "directory" not in v and "options" not in v


async def test_voice_filters(client: TestClient[Any, Any]) -> None:
    resp = await client.post("/voices", json={"language": "en", "accent": "gb", "gender": "male"})
    voices = (await resp.json())["voices"]
    assert [v["id"] for v in voices] == ["callum"]
    resp = await client.get("/voices", params={"language": "en", "gender": "female"})
    assert sorted(v["id"] for v in (await resp.json())["voices"]) == ["alba", "sarah"]
    resp = await client.post("/voices", json={"language": "zz"})
    assert resp.status == 204 and await resp.read() == b""
    await assert_error(await client.post("/voices", json={"accent": "gb"}), 400,
                       "For accent to be queried, language has to be provided as well.")
    await assert_error(await client.get("/voices?accent=gb"), 400,
                       "For accent to be queried, language has to be provided as well.")
    await assert_error(await client.post("/voices", json={"gender": "other"}), 422,
                       "gender: Not a valid choice. Valid choices: male|female")
    await assert_error(await client.post("/voices", json={"language": 3}), 422,
                       "language: Not a valid string.")
    await assert_error(await client.post("/voices", json="en"), 422)
    await assert_error(await client.post("/voices", data=b"{", headers={
        "Content-Type": "application/json"}), 400, "Request body is not valid JSON")


async def test_get_voice(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/voices/alba")
    assert resp.status == 200
    body = await resp.json()
    assert body["voice_id"] == "alba" and body["language"] == "en" and body["accent"] == "gb"
    assert body["gender"] == "female" and body["engine"] == "espeak"
    await assert_error(await client.get("/voices/nope"), 404, "Voice could not be found")
    await assert_error(await client.get("/voices/' OR 1=1 --"), 404, "Voice could not be found")


async def test_no_voices_gives_204(tmp_path: Any, started_app_factory: Any) -> None:
    from tests.helpers.app import make_config
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    client = await started_app_factory(make_config(tmp_path, voice_config=str(empty)))
    resp = await client.get("/languages")
    assert resp.status == 204 and await resp.read() == b""
    assert (await client.post("/voices")).status == 204
