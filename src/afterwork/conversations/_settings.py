"""The service's settings: one pydantic-settings model read from ``AFTERWORK_*`` variables.

Command-line flags override the environment (``load_settings(port=9000)``). A bad value stops
the service before it starts, with a message that names the variable to fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import SettingsError as SourceError

import afterwork as aw

from ._jobs import LLM_LANE


class SettingsError(ValueError):
    """A setting has a value the service cannot start with."""


class ServiceSettings(aw.Settings):
    """Everything ``afterwork serve`` reads. ``AFTERWORK_PORT=9000`` sets ``port``."""

    host: str = Field("127.0.0.1", min_length=1, description="The address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="The port; 0 picks a free one.")
    db: Path = Field(Path("afterwork.db"), description="The SQLite database file.")
    journal: bool = Field(
        True,
        description="Keep admitted work in a journal next to the database (see journal_path), "
        "so a crash or a drain deadline loses no job.",
    )
    max_active: int = Field(
        1000,
        ge=1,
        description="Completions running their jobs at once. As high as max_pending by default: "
        "the webhook job can wait out 36 s of retries, and a lower cap would let completions "
        "stuck on a dead endpoint hold back every other one.",
    )
    request_threads: int = Field(
        4,
        ge=1,
        description="Threads the request handlers may use at once for the database, apart "
        "from the jobs' budget, so a saturated budget never stalls a request.",
    )
    lanes: dict[str, int] = Field(
        default_factory=lambda: {LLM_LANE: 6},
        description='Lane caps as JSON; the jobs need "llm", e.g. {"llm": 6}.',
    )
    llm_latency_s: tuple[float, float] = Field(
        (0.0, 0.0), description="The extractor's emulated latency range, e.g. [0.05, 0.2]."
    )
    job_timeout_s: float = Field(60.0, gt=0, description="Timeout of each job but the webhook.")
    webhook_retry_delays_s: tuple[float, ...] = Field(
        (1.0, 5.0, 30.0), description="Delays between webhook attempts, e.g. [1, 5, 30]."
    )
    webhook_max_retry_after_s: float = Field(60.0, ge=0, description="Cap on Retry-After.")
    webhook_connect_timeout_s: float = Field(2.0, gt=0, description="Webhook connect timeout.")
    webhook_read_timeout_s: float = Field(15.0, gt=0, description="Webhook read timeout.")
    persona_window_s: int = Field(
        0, ge=0, description="Persona refresh window; 0 means until the next 00:00 UTC."
    )
    max_body_bytes: int = Field(4_000_000, ge=1024, description="Largest request body (413).")
    retry_after_s: int = Field(1, ge=0, description="Retry-After sent with a 503.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="The least severe log events written (debug adds each job's success)."
    )

    @property
    def journal_path(self) -> Path:
        """The journal's file, beside the database: ``afterwork.db`` -> ``afterwork.journal.db``."""
        return self.db.with_name(f"{self.db.stem}.journal{self.db.suffix or '.db'}")

    @field_validator("lanes")
    @classmethod
    def _has_llm_lane(cls, lanes: dict[str, int]) -> dict[str, int]:
        if LLM_LANE not in lanes:
            raise ValueError(
                f"the conversation jobs run in the {LLM_LANE!r} lane, which {lanes!r} lacks; "
                f'add it, e.g. {{"{LLM_LANE}": 6}}'
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


def load_settings(**overrides: Any) -> ServiceSettings:
    """Read the settings, with ``overrides`` (flags) on top; raise ``SettingsError``."""
    given = {name: value for name, value in overrides.items() if value is not None}
    try:
        return ServiceSettings(**given)
    except ValidationError as error:
        raise SettingsError(describe(error, flags=set(given))) from None
    except SourceError as error:  # a complex setting (a dict, a list) that is not JSON
        raise SettingsError(
            f"invalid setting: {error}; AFTERWORK_LANES, AFTERWORK_LLM_LATENCY_S and "
            'AFTERWORK_WEBHOOK_RETRY_DELAYS_S take JSON, e.g. {"llm": 6} or [1, 5, 30]'
        ) from None


def describe(error: ValidationError, flags: set[str]) -> str:
    """One line per bad setting, naming the variable (or flag) and the value given."""
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0]) if problem["loc"] else "?"
        where = f"--{name.replace('_', '-')}" if name in flags else f"AFTERWORK_{name.upper()}"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"invalid setting {where}={problem.get('input')!r}: {message}")
    return "\n".join(lines)
