"""The service's settings: one pydantic-settings model read from ``AFTERWORK_*`` variables.

Command-line flags override the environment (``load_settings(port=9000)``). A bad value stops
the service before it starts, with a message that names the variable to fix.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import SettingsError as SourceError

import afterwork as aw

from ._jobs import HTTP_LANE, LLM_LANE
from ._redact import redact

#: Hosts the service may serve on without a token: this machine only.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
#: The shortest API token accepted: a guessable token is no token.
MIN_TOKEN_LENGTH = 16


class SettingsError(ValueError):
    """A setting has a value the service cannot start with."""


class ServiceSettings(aw.Settings):
    """Everything ``afterwork serve`` reads. ``AFTERWORK_PORT=9000`` sets ``port``."""

    host: str = Field("127.0.0.1", min_length=1, description="The address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="The port; 0 picks a free one.")
    db: Path = Field(Path("afterwork.db"), description="The SQLite database file.")
    journal: bool = Field(
        True,
        description="Keep admitted work in a journal next to the database, so a crash or a "
        "drain deadline loses no job.",
    )
    broker: str | None = Field(
        None,
        description="A Redis URL: send each conversation to 'afterwork worker --conversations' "
        "processes instead of running the jobs here (needs afterwork[taskiq]).",
    )
    queue: str = Field(
        "afterwork", min_length=1, max_length=200, description="With a broker: its queue."
    )
    api_token: SecretStr | None = Field(
        None,
        description="The bearer token every /v1 request must carry. Without one the service "
        "serves only a loopback address.",
    )
    metrics_token: bool = Field(False, description="Require the token for /metrics too.")
    docs: bool = Field(False, description="Serve /docs and /openapi.json (behind the token).")
    max_active: int = Field(
        1000,
        ge=1,
        description="Completions running their jobs at once. As high as max_pending: a job "
        "waiting on a slow endpoint must not hold back the completions behind it.",
    )
    request_threads: int = Field(
        4,
        ge=1,
        description="Threads the request handlers may use at once for the database, apart "
        "from the jobs' budget, so a saturated budget never stalls a request.",
    )
    lanes: dict[str, int] = Field(
        default_factory=lambda: {LLM_LANE: 6, HTTP_LANE: 32},
        description='Lane caps as JSON; the jobs need "llm" and "http".',
    )
    llm_latency_s: tuple[float, float] = Field(
        (0.0, 0.0), description="The extractor's emulated latency range, e.g. [0.05, 0.2]."
    )
    job_timeout_s: float = Field(60.0, gt=0, description="Timeout of each job attempt.")
    webhook_retry_delays_s: tuple[float, ...] = Field(
        (1.0, 5.0, 30.0), description="Delays between webhook attempts, e.g. [1, 5, 30]."
    )
    webhook_max_retry_after_s: float = Field(600.0, ge=0, description="Cap on Retry-After.")
    webhook_connect_timeout_s: float = Field(2.0, gt=0, description="Webhook connect timeout.")
    webhook_read_timeout_s: float = Field(15.0, gt=0, description="Webhook read timeout.")
    persona_window_s: int = Field(
        0, ge=0, description="Persona refresh window; 0 means until the next 00:00 UTC."
    )
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Largest request body (413).")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A client must send a request's headers within this (408)."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A client must send a request's body within this (408)."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with a 503.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="The least severe log events written (debug adds each job's success)."
    )

    @property
    def journal_path(self) -> Path:
        """The journal's file, beside the database: ``afterwork.db`` -> ``afterwork.journal.db``."""
        return self.db.with_name(f"{self.db.stem}.journal{self.db.suffix or '.db'}")

    @property
    def loopback(self) -> bool:
        """Whether ``host`` is this machine only."""
        if self.host in LOOPBACK_NAMES:
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @field_validator("broker")
    @classmethod
    def _redis_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"{redact(url)!r} is not a Redis URL; e.g. redis://127.0.0.1:6379/0")
        return url

    @field_validator("api_token")
    @classmethod
    def _long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None and len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(_short(token.get_secret_value()))
        return token

    @field_validator("lanes")
    @classmethod
    def _has_job_lanes(cls, lanes: dict[str, int]) -> dict[str, int]:
        missing = [lane for lane in (LLM_LANE, HTTP_LANE) if lane not in lanes]
        if missing:
            raise ValueError(
                f"the conversation jobs run in the lanes {LLM_LANE!r} and {HTTP_LANE!r}, and "
                f"{lanes!r} lacks {', '.join(map(repr, missing))}; e.g. "
                f'{{"{LLM_LANE}": 6, "{HTTP_LANE}": 32}}'
            )
        return lanes

    @field_validator("llm_latency_s")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] <= value[1]:
            raise ValueError(f"it must be [low, high] with 0 <= low <= high, got {list(value)}")
        return value

    @field_validator("webhook_retry_delays_s")
    @classmethod
    def _delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(delay < 0 for delay in value):
            raise ValueError(f"delays must be seconds >= 0, got {list(value)}")
        return value

    def check_exposure(self) -> None:
        """Refuse to serve beyond this machine without a token: anyone could post as anyone."""
        if self.api_token is None and not self.loopback:
            raise SettingsError(
                f"refusing to serve on {self.host} without an API token: anyone who can reach "
                "it could post and read every user's conversations; set AFTERWORK_API_TOKEN "
                "(or pass --token-file FILE), or serve on 127.0.0.1"
            )


def load_settings(token_file: Path | None = None, **overrides: Any) -> ServiceSettings:
    """Read the settings, with ``overrides`` (flags) on top; raise ``SettingsError``.

    ``token_file``: a file whose content (one line) is the API token.
    """
    given = {name: value for name, value in overrides.items() if value is not None}
    if token_file is not None:
        given["api_token"] = read_token(token_file)
    try:
        settings = ServiceSettings(**given)
    except ValidationError as error:
        raise SettingsError(describe(error, flags=set(given))) from None
    except SourceError as error:  # a complex setting (a dict, a list) that is not JSON
        raise SettingsError(
            f"invalid setting: {error}; AFTERWORK_LANES, AFTERWORK_LLM_LATENCY_S and "
            'AFTERWORK_WEBHOOK_RETRY_DELAYS_S take JSON, e.g. {"llm": 6} or [1, 5, 30]'
        ) from None
    if not settings.db.parent.is_dir():
        raise SettingsError(
            f"invalid setting AFTERWORK_DB={str(settings.db)!r}: the folder "
            f"{str(settings.db.parent)!r} does not exist; create it, or choose another --db"
        )
    settings.check_exposure()
    return settings


def read_token(path: Path) -> str:
    """The token in ``path``: its first line, without surrounding whitespace."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"cannot read the token file {str(path)!r}: {error}") from None
    lines = text.strip().splitlines()
    token = lines[0].strip() if lines else ""
    if len(token) < MIN_TOKEN_LENGTH:
        raise SettingsError(f"the token file {str(path)!r}: {_short(token)}")
    return token


def _short(token: str) -> str:
    return (
        f"the token has {len(token)} characters, fewer than {MIN_TOKEN_LENGTH}; use a random "
        "one, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    )


def describe(error: ValidationError, flags: set[str]) -> str:
    """One line per bad setting, naming the variable (or flag) and the value given."""
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "?"
        where = f"--{name.replace('_', '-')}" if name in flags else f"AFTERWORK_{name.upper()}"
        message = problem["msg"].removeprefix("Value error, ")
        given = problem.get("input")
        # A URL's password or token stays out of the message, as out of the logs.
        shown = "<hidden>" if name == "api_token" else redact(repr(given))
        lines.append(f"invalid setting {where}={shown}: {message}")
    return "\n".join(lines)
