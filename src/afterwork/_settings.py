"""Settings for applications that embed afterwork, read from ``AFTERWORK_*`` variables.

The library never reads the environment itself: an application (the conversation service,
the CLI) builds ``Settings()`` and passes ``settings.dispatcher_kwargs()`` to ``Dispatcher``.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """The dispatcher's settings. ``AFTERWORK_MAX_THREADS=16`` sets ``max_threads``."""

    model_config = SettingsConfigDict(env_prefix="AFTERWORK_", extra="ignore")

    max_threads: int = Field(32, ge=1, description="Threads that may run blocking work at once.")
    max_pending: int = Field(1000, ge=1, description="Completions admitted and unfinished.")
    max_active: int = Field(256, ge=1, description="Completions running their jobs at once.")
    max_delayed: int = Field(
        10_000, ge=0, description="Delayed submissions and parked jobs waiting for their time."
    )
    park_after: float = Field(
        5.0, ge=0, allow_inf_nan=False, description="A longer retry wait parks the job."
    )
    drain_timeout: float = Field(
        30.0, ge=0, allow_inf_nan=False, description="Seconds a drain lets work finish."
    )
    lanes: dict[str, int] = Field(
        default_factory=dict, description='Lane caps as JSON, e.g. {"llm": 6}.'
    )

    def dispatcher_kwargs(self) -> dict[str, Any]:
        """The keyword arguments for ``Dispatcher(...)``."""
        return {
            "max_threads": self.max_threads,
            "max_pending": self.max_pending,
            "max_active": self.max_active,
            "max_delayed": self.max_delayed,
            "park_after": self.park_after,
            "drain_timeout": self.drain_timeout,
            "lanes": dict(self.lanes),
        }
