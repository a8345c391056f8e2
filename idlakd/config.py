"""Settings as data: one table of (name, default, help), read from INI, env and flags."""

from __future__ import annotations

import configparser
import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Any, Final, Mapping

SECTION: Final = "idlakd"
ENV_PREFIX: Final = "IDLAKD_"


class ConfigError(Exception):
    """A setting has a value the daemon cannot use; the message names the key."""


@dataclasses.dataclass(frozen=True)
class Setting:
    """One configuration key: its name, type, default (as INI text) and help."""

    name: str
    kind: str  # str | int | float | bool | path | database | choice:<a|b>
    default: str
    help: str


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("host", "str", "127.0.0.1", "Address to listen on (0.0.0.0 for all interfaces)."),
    Setting("port", "int", "8080", "TCP port to listen on."),
    Setting("state_dir", "path", "",
            "Directory for database, secret and cache. Empty: $STATE_DIRECTORY "
            "(set by systemd) or ~/.local/state/idlakd."),
    Setting("database", "database", "",
            "SQLite database file, or a PostgreSQL URL (postgresql://user:password@host:port/db) "
            "shared by several daemons. Empty: <state_dir>/idlakd.db."),
    Setting("database_pool_size", "int", "10",
            "PostgreSQL only: most connections this daemon (or command) opens to the database."),
    Setting("change_check_seconds", "float", "5",
            "PostgreSQL only: how often a daemon reads the store's change counters in case a "
            "LISTEN/NOTIFY notification was lost (a dropped connection); changes normally "
            "arrive at once (at least 0.1). A daemon on SQLite reads them every 0.5 s."),
    Setting("secret_file", "path", "",
            "File holding the JWT signing secret, created 0600 on first start. "
            "Empty: <state_dir>/secret.key with SQLite; with PostgreSQL the secret is kept in "
            "the database, shared by every daemon."),
    Setting("token_expiration_minutes", "int", "30", "Lifetime of an access token in minutes."),
    Setting("authorization", "bool", "true",
            "Require access tokens. 'false' opens every route to anyone (a loud warning is logged)."),
    Setting("log_level", "choice:DEBUG|INFO|WARNING|ERROR", "INFO", "Logging level."),
    Setting("log_file", "path", "",
            "Write logs to this file (rotated). Empty: stderr (journald under systemd)."),
    Setting("voice_config", "path", "",
            "JSON voice list loaded at every start. Empty: ./voiceconfig.json if present, "
            "else the one installed with idlakd."),
    Setting("max_body_bytes", "int", "1048576", "Largest accepted request body in bytes (413 above)."),
    Setting("max_text_length", "int", "20000", "Largest text accepted by /speech, in characters (413 above)."),
    Setting("max_audio_seconds", "float", "1800",
            "Most seconds of audio one /speech request may produce: refused with 413 before "
            "synthesis when the text's estimate is over it, cut (aborted stream) if the engine "
            "overshoots."),
    Setting("max_break_share", "float", "0.5",
            "Most share (0-1) of a request's estimated audio that markup breaks may take; "
            "a single break is at most 10 s whatever this says."),
    Setting("spool_bytes", "int", "1048576",
            "stream:false answers are held in memory up to this many bytes, then spooled "
            "to a temporary file in state_dir (at most max_concurrent_syntheses + max_queue "
            "answers are open at once, so this bounds their memory)."),
    Setting("worker_memory_mb", "int", "1024",
            "Address-space limit of each synthesis worker process in MiB (RLIMIT_AS); 0: none."),
    Setting("header_timeout_seconds", "float", "10",
            "A client must send a request's headers within this many seconds of connecting "
            "(or of its previous response), else the connection is closed."),
    Setting("body_timeout_seconds", "float", "30",
            "A request body must arrive within this many seconds, else 408 and close."),
    Setting("max_connections", "int", "2000",
            "Most open client connections; beyond it new connections are closed at once."),
    Setting("bcrypt_rounds", "int", "12", "bcrypt cost factor for stored passwords (4-31)."),
    Setting("login_max_pending", "int", "32",
            "Most password checks waiting for a bcrypt thread; beyond it 503 with Retry-After."),
    Setting("login_max_attempts_per_address", "int", "300",
            "Login attempts (right or wrong) allowed per client address within "
            "login_window_seconds before 429."),
    Setting("login_max_failures", "int", "10",
            "Failed logins allowed per uid within login_window_seconds before 429."),
    Setting("login_max_failures_per_address", "int", "100",
            "Failed logins allowed per client address within login_window_seconds before 429."),
    Setting("login_window_seconds", "int", "300", "Window over which failed logins are counted."),
    Setting("trusted_proxies", "str", "",
            "Comma-separated addresses or networks (CIDR) of reverse proxies whose "
            "X-Forwarded-For / Forwarded headers are believed for the client address (throttle, "
            "access log, quotas). Empty: none is believed."),
    Setting("forwarded_header", "choice:X-FORWARDED-FOR|FORWARDED", "X-Forwarded-For",
            "The one header trusted_proxies write the client's address to: X-Forwarded-For "
            "(HAProxy's option forwardfor, nginx, most balancers) or Forwarded (RFC 7239 for=). "
            "The other is never read: a proxy passes it through as the client sent it."),
    Setting("quota_chars_per_minute", "int", "100000",
            "Default most characters of text one user may send to synthesis per minute "
            "(429 above); 0: no limit. Per-user overrides: idlakd user limits, the API, the page."),
    Setting("quota_chars_per_day", "int", "0",
            "Default most characters of text one user may send to synthesis per UTC day "
            "(429 above); 0: no limit."),
    Setting("quota_concurrent", "int", "8",
            "Default most syntheses (speech requests) one user may run at once (429 above); "
            "0: no limit."),
    Setting("job_concurrency", "int", "1",
            "Jobs (POST /v1/jobs) this daemon synthesises at once, in the background: at most "
            "this many of their chunks at once, only while no interactive chunk runs or waits."),
    Setting("job_max_text_length", "int", "2000000",
            "Largest text accepted by POST /v1/jobs, in characters (413 above)."),
    Setting("jobs_per_user", "int", "4",
            "Most queued or running jobs one user may have (429 above); 0: no limit."),
    Setting("job_max_result_bytes_per_user", "int", "1073741824",
            "Most bytes of job audio one user may keep stored; a new job is refused (429) "
            "while they hold this much; 0: no limit."),
    Setting("job_retention_hours", "float", "168",
            "Hours a finished, failed or cancelled job and its audio are kept before deletion."),
    Setting("job_claim_timeout_seconds", "float", "60",
            "A running job whose daemon has not written its heartbeat (every sixth of this) "
            "for this long is taken over by another daemon (or this one after a restart); at "
            "least 1."),
    Setting("max_api_keys_per_user", "int", "100", "Most API keys one user may hold."),
    Setting("openai_models", "str", "tts-1,tts-1-hd,gpt-4o-mini-tts",
            "Model names /v1/audio/speech accepts (comma-separated); every one speaks with the "
            "asked voice as it is."),
    Setting("openai_voices", "str",
            "alloy=sarah,ash=callum,ballad=callum,coral=alba,echo=callum,fable=alba,"
            "nova=sarah,onyx=callum,sage=alba,shimmer=sarah,verse=callum",
            "Voice aliases for /v1/audio/speech (name=voice_id, comma-separated): OpenAI's voice "
            "names mapped to installed voices. A voice id is always accepted as itself."),
    Setting("workers_per_voice", "int", "2", "Most synthesis worker processes per voice."),
    Setting("max_concurrent_syntheses", "int", "4", "Most chunks synthesised at once, over all voices."),
    Setting("max_queue", "int", "64",
            "Most requests waiting for synthesis before 503; at most max_concurrent_syntheses "
            "+ max_queue speech streams are open at once."),
    Setting("worker_idle_seconds", "int", "600", "An idle worker is stopped after this many seconds."),
    Setting("prewarm_workers", "bool", "true",
            "At start (and when a voice is added or changed) start one worker per voice in the "
            "background, at most two at a time, so a voice's first request finds one running. The "
            "socket, /healthz and the API answer at once; only /readyz waits for the start-up "
            "round. 'false': workers start with the first request."),
    Setting("synthesis_timeout_seconds", "float", "60",
            "A worker silent this long on one chunk is killed and the request fails."),
    Setting("stream_idle_seconds", "float", "20",
            "/v1/speech/stream: a socket with no message from its client for this long, and "
            "no audio left to send, is closed (1008)."),
    Setting("max_buffer_delay_ms", "int", "400",
            "/v1/speech/stream: text without a sentence end is spoken once no more has come "
            "for this many milliseconds."),
    Setting("ffmpeg", "path", "",
            "ffmpeg binary (every format but wav and pcm at the voice's rate, and prosody). Empty: "
            "the one from the imageio-ffmpeg wheel."),
    Setting("ffmpeg_spares", "int", "2",
            "Most ffmpeg processes started ahead and kept waiting, one per recently used encoding "
            "(format, rates, prosody), so a request's first byte does not wait for ffmpeg to "
            "start; a spare has had no input, serves one request only, and stops after 120 s "
            "unused. 0: none."),
    Setting("idlak_root", "path", "",
            "Idlak checkout (its src/ holds pyIdlak) for voices with engine 'tangle'."),
    Setting("voice_roots", "str", "",
            "Colon-separated directories that voice directories must lie under. "
            "Empty: any directory."),
    Setting("cache_max_bytes", "int", "0",
            "Size bound of the on-disk audio cache in <state_dir>/cache; 0 disables it."),
    Setting("drain_seconds", "float", "5",
            "On SIGTERM, how long /readyz fails (503, draining) while the daemon still accepts "
            "and serves new requests, so a load balancer takes it out first; then it stops "
            "listening. 0: stop listening at once."),
    Setting("shutdown_grace_seconds", "float", "30",
            "On SIGTERM, once draining ends, how long running requests may finish before "
            "workers stop."),
    Setting("metrics_local_only", "bool", "true", "Serve /metrics to loopback addresses only."),
    Setting("cookie_secure", "bool", "false",
            "Mark the admin session cookie Secure even when the request came over plain HTTP."),
)

_BOOL_WORDS: Final = {
    "1": True, "true": True, "yes": True, "on": True,
    "0": False, "false": False, "no": False, "off": False,
}


def _parse(setting: Setting, raw: str) -> Any:
    """Turn the text of a setting into its typed value, or raise ConfigError."""
    text = raw.strip()
    kind = setting.kind
    try:
        if kind == "int":
            value = int(text)
            if value < 0:
                raise ValueError
            return value
        if kind == "float":
            number = float(text)
            if not number >= 0 or number == float("inf"):
                raise ValueError
            return number
        if kind == "bool":
            return _BOOL_WORDS[text.lower()]
    except (ValueError, KeyError):
        expected = {"int": "a whole number >= 0", "float": "a number >= 0",
                    "bool": "true or false"}[kind]
        raise ConfigError(f"setting '{setting.name}': {raw!r} is not {expected}") from None
    if kind.startswith("choice:"):
        choices = kind.split(":", 1)[1].split("|")
        if text.upper() not in choices:
            raise ConfigError(
                f"setting '{setting.name}': {raw!r} is not one of {'|'.join(choices)}")
        return text.upper()
    if kind == "path":
        return Path(os.path.expanduser(text)) if text else None
    if kind == "database":
        if text.startswith(POSTGRES_SCHEMES):
            return DatabaseUrl(text)
        if "://" in text:
            raise ConfigError(f"setting '{setting.name}': only postgresql:// URLs or a file path")
        return Path(os.path.expanduser(text)) if text else None
    return text


# The URL schemes libpq (and asyncpg) accept for PostgreSQL.
POSTGRES_SCHEMES: Final = ("postgresql://", "postgres://")


@dataclasses.dataclass(frozen=True)
class DatabaseUrl:
    """A PostgreSQL connection URL; str() hides its password, so logs never show it."""

    url: str = dataclasses.field(repr=False)

    def __str__(self) -> str:
        return _without_password(self.url)

    def __repr__(self) -> str:
        return f"DatabaseUrl({str(self)!r})"


def _without_password(url: str) -> str:
    """The URL with the password of its user part (user:password@) replaced by ***."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    user, at, host = authority.rpartition("@")
    if at and ":" in user:
        user = user.split(":", 1)[0] + ":***"
    masked = f"{user}{at}{host}{slash}{path}"
    # A password may also come as a query parameter (?password=...).
    return f"{scheme}://" + re.sub(r"(?i)(password=)[^&]*", r"\1***", masked)


@dataclasses.dataclass(frozen=True)
class Config:
    """The daemon's settings, typed; built only by load_config()."""

    host: str
    port: int
    state_dir: Path
    database: Path | DatabaseUrl
    database_pool_size: int
    change_check_seconds: float
    secret_file: Path | None  # None: kept in the (PostgreSQL) database
    token_expiration_minutes: int
    authorization: bool
    log_level: str
    log_file: Path | None
    voice_config: Path | None
    max_body_bytes: int
    max_text_length: int
    max_audio_seconds: float
    max_break_share: float
    spool_bytes: int
    worker_memory_mb: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    max_connections: int
    bcrypt_rounds: int
    login_max_pending: int
    login_max_attempts_per_address: int
    login_max_failures: int
    login_max_failures_per_address: int
    login_window_seconds: int
    trusted_proxies: str
    forwarded_header: str
    quota_chars_per_minute: int
    quota_chars_per_day: int
    quota_concurrent: int
    job_concurrency: int
    job_max_text_length: int
    jobs_per_user: int
    job_max_result_bytes_per_user: int
    job_retention_hours: float
    job_claim_timeout_seconds: float
    max_api_keys_per_user: int
    openai_models: str
    openai_voices: str
    workers_per_voice: int
    max_concurrent_syntheses: int
    max_queue: int
    worker_idle_seconds: int
    prewarm_workers: bool
    synthesis_timeout_seconds: float
    stream_idle_seconds: float
    max_buffer_delay_ms: int
    ffmpeg: Path | None
    ffmpeg_spares: int
    idlak_root: Path | None
    voice_roots: str
    cache_max_bytes: int
    drain_seconds: float
    shutdown_grace_seconds: float
    metrics_local_only: bool
    cookie_secure: bool

    @property
    def cache_dir(self) -> Path:
        """Where cached audio lives."""
        return self.state_dir / "cache"

    @property
    def voice_root_paths(self) -> list[Path]:
        """The directories voice directories must lie under (empty list: anywhere)."""
        return [Path(p).resolve() for p in self.voice_roots.split(":") if p.strip()]

    def replace(self, **changes: Any) -> "Config":
        """A copy with some settings changed (used by tests and the CLI)."""
        return dataclasses.replace(self, **changes)


def default_state_dir(env: Mapping[str, str]) -> Path:
    """$STATE_DIRECTORY from systemd (first entry), else ~/.local/state/idlakd."""
    systemd_dirs = env.get("STATE_DIRECTORY", "")
    if systemd_dirs:
        return Path(systemd_dirs.split(":")[0])
    return Path(os.path.expanduser("~/.local/state/idlakd"))


def default_voice_config() -> Path | None:
    """./voiceconfig.json, else the copy installed under <prefix>/share/idlakd, else the source tree's."""
    candidates = [
        Path.cwd() / "voiceconfig.json",
        Path(sys.prefix) / "share" / "idlakd" / "voiceconfig.json",
        Path(__file__).resolve().parent.parent / "voiceconfig.json",
    ]
    return next((p for p in candidates if p.is_file()), None)


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Config:
    """Build the Config: defaults < INI file < IDLAKD_* environment < explicit overrides."""
    env = os.environ if env is None else env
    raw: dict[str, str] = {s.name: s.default for s in SETTINGS}
    known = set(raw)
    if path is None and env.get(ENV_PREFIX + "CONFIG"):
        path = Path(env[ENV_PREFIX + "CONFIG"])
    if path is not None:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as fh:
                parser.read_file(fh)
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except (configparser.Error, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path}: not a valid INI file ({exc})") from None
        if parser.has_section(SECTION):
            for key, value in parser.items(SECTION):
                if key not in known:
                    raise ConfigError(f"config file {path}: unknown setting '{key}'")
                raw[key] = value
    for name in known:
        env_value = env.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            raw[name] = env_value
    for key, value in (overrides or {}).items():
        if key not in known:
            raise ConfigError(f"unknown setting '{key}'")
        raw[key] = value

    values: dict[str, Any] = {s.name: _parse(s, raw[s.name]) for s in SETTINGS}
    if not 0 < values["port"] < 65536:
        raise ConfigError(f"setting 'port': {raw['port']!r} is not a TCP port (1-65535)")
    for name in ("token_expiration_minutes", "workers_per_voice", "max_concurrent_syntheses",
                 "max_body_bytes", "max_text_length", "login_max_failures",
                 "login_max_failures_per_address", "login_window_seconds", "max_connections",
                 "login_max_pending", "login_max_attempts_per_address", "job_concurrency",
                 "job_max_text_length", "max_buffer_delay_ms"):
        if values[name] < 1:
            raise ConfigError(f"setting '{name}': {raw[name]!r} must be at least 1")
    if not 0 <= values["ffmpeg_spares"] <= 16:
        raise ConfigError(f"setting 'ffmpeg_spares': {raw['ffmpeg_spares']!r} must be 0 to 16")
    if not 4 <= values["bcrypt_rounds"] <= 31:
        raise ConfigError(f"setting 'bcrypt_rounds': {raw['bcrypt_rounds']!r} must be 4 to 31")
    for name in ("max_audio_seconds", "header_timeout_seconds", "body_timeout_seconds",
                 "job_retention_hours",
                 "stream_idle_seconds"):
        if values[name] <= 0:
            raise ConfigError(f"setting '{name}': must be more than 0")
    # Below these, the heartbeats and counter reads would become a load on the database.
    for name, least in (("change_check_seconds", 0.1), ("job_claim_timeout_seconds", 1.0)):
        if values[name] < least:
            raise ConfigError(f"setting '{name}': {raw[name]!r} must be at least {least:g}")
    if values["max_break_share"] > 1:
        raise ConfigError("setting 'max_break_share': must be from 0 to 1")
    if values["synthesis_timeout_seconds"] <= 0:
        raise ConfigError("setting 'synthesis_timeout_seconds': must be more than 0")
    state_dir = values["state_dir"] or default_state_dir(env)
    values["state_dir"] = state_dir
    values["database"] = values["database"] or state_dir / "idlakd.db"
    if values["database_pool_size"] < 1:
        raise ConfigError("setting 'database_pool_size': must be at least 1")
    if values["secret_file"] is None and not isinstance(values["database"], DatabaseUrl):
        values["secret_file"] = state_dir / "secret.key"
    values["voice_config"] = values["voice_config"] or default_voice_config()
    return Config(**values)

