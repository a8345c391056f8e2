"""Every typed key of the app and of requests, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from aiohttp import web

from idlakd.config import Config

if TYPE_CHECKING:
    from idlakd.web.admin.session import Flashes
    from idlakd.web.auth import Passwords, TokenClaims
    from idlakd.errors import Unauthorized
    from idlakd.web.ops.health import WorkerProbe
    from idlakd.web.ops.metrics import Metrics
    from idlakd.web.runtime import Runtime
    from idlakd.store.sqlite import Store
    from idlakd.synth.service import SynthService
    from idlakd.accounts.throttle import LoginThrottle

config_key: Final = web.AppKey("config", Config)
store_key: Final = web.AppKey["Store"]("store")
secret_key: Final = web.AppKey("secret", bytes)
passwords_key: Final = web.AppKey["Passwords"]("passwords")
throttle_key: Final = web.AppKey["LoginThrottle"]("throttle")
synth_key: Final = web.AppKey["SynthService"]("synth")
runtime_key: Final = web.AppKey["Runtime"]("runtime")
metrics_key: Final = web.AppKey["Metrics"]("metrics")
health_key: Final = web.AppKey["WorkerProbe"]("health")
admin_flashes_key: Final = web.AppKey["Flashes"]("admin_flashes")

request_id_key: Final = web.RequestKey("request_id", str)
user_id_key: Final = web.RequestKey("user_id", str)
started_response_key: Final = web.RequestKey("started_response", web.StreamResponse)
request_start_key: Final = web.RequestKey("request_start", float)
token_key: Final = web.RequestKey["TokenClaims | Unauthorized"]("token")

disconnect_counted_key: Final = web.ResponseKey("disconnect_counted", bool)
