"""Every typed key of the app and of requests, in one place.

Types come from lower layers or from web modules that import no keys, so that no module
imported here imports this one back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Mapping

from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute

from idlakd.accounts.keys import PresentedKey
from idlakd.accounts.passwords import Passwords
from idlakd.accounts.quotas import Quotas
from idlakd.accounts.throttle import LoginThrottle
from idlakd.accounts.tokens import TokenClaims, TokenVerifier
from idlakd.config import Config
from idlakd.errors import NotAuthenticated
from idlakd.models import User
from idlakd.store.factory import Store
from idlakd.synth.jobs import JobRunner
from idlakd.synth.synthesizer import Synthesizer
from idlakd.web.access import Access
from idlakd.web.admin.flashes import Flashes
from idlakd.web.admin.signing import AdminSession
from idlakd.web.runtime import Runtime

if TYPE_CHECKING:
    from idlakd.web.ops.instruments import Metrics

config_key: Final = web.AppKey("config", Config)
store_key: Final = web.AppKey("store", Store)
secret_key: Final = web.AppKey("secret", bytes)
verifier_key: Final = web.AppKey("verifier", TokenVerifier)
passwords_key: Final = web.AppKey("passwords", Passwords)
throttle_key: Final = web.AppKey("throttle", LoginThrottle)
quotas_key: Final = web.AppKey("quotas", Quotas)
synth_key: Final = web.AppKey("synth", Synthesizer)
jobs_key: Final = web.AppKey("jobs", JobRunner)
runtime_key: Final = web.AppKey("runtime", Runtime)
metrics_key: Final = web.AppKey["Metrics"]("metrics")
admin_flashes_key: Final = web.AppKey("admin_flashes", Flashes)
access_key: Final = web.AppKey["Mapping[AbstractRoute, Access]"]("access")

request_id_key: Final = web.RequestKey("request_id", str)
user_id_key: Final = web.RequestKey("user_id", str)
started_response_key: Final = web.RequestKey("started_response", web.StreamResponse)
request_start_key: Final = web.RequestKey("request_start", float)
# The client's address (web.proxies: the peer, or what a trusted proxy forwarded).
client_address_key: Final = web.RequestKey("client_address", str)
# A verified token's claims, an API key's digest, or why the request has neither.
token_key: Final = web.RequestKey["TokenClaims | PresentedKey | NotAuthenticated"]("token")
# Set by the guard: who is calling a user/admin route, and the admin page's session.
user_key: Final = web.RequestKey("user", User)
admin_session_key: Final = web.RequestKey("admin_session", AdminSession)

