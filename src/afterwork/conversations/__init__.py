"""The reference application: a conversation service whose post-processing runs on afterwork.

A completed conversation goes through seven jobs (a vector, memories, trends, action items
with an export, goal progress, a webhook, persona refreshes) against an embedded SQLite store,
behind a FastAPI service that admits work without ever waiting on it. ``afterwork serve`` runs
the service; ``afterwork demo`` drives it with realistic traffic and reports what happened.
"""

from __future__ import annotations

from ._app import create_app as create_app
from ._embedding import DIMENSIONS as DIMENSIONS
from ._embedding import cosine as cosine
from ._embedding import embed as embed
from ._extractor import Extractor as Extractor
from ._extractor import RuleExtractor as RuleExtractor
from ._jobs import JOBS as JOBS
from ._jobs import LLM_LANE as LLM_LANE
from ._jobs import PIPELINE as PIPELINE
from ._jobs import Services as Services
from ._jobs import build_pipeline as build_pipeline
from ._logging import configure_logging as configure_logging
from ._models import MAX_SEGMENTS as MAX_SEGMENTS
from ._models import MAX_TRANSCRIPT_BYTES as MAX_TRANSCRIPT_BYTES
from ._models import Conversation as Conversation
from ._models import ConversationCompleted as ConversationCompleted
from ._models import Structured as Structured
from ._models import TranscriptSegment as TranscriptSegment
from ._settings import ServiceSettings as ServiceSettings
from ._settings import SettingsError as SettingsError
from ._settings import load_settings as load_settings
from ._store import Store as Store
from ._webhook import RetryPolicy as RetryPolicy
from ._webhook import WebhookFailed as WebhookFailed

__all__ = [
    "DIMENSIONS",
    "JOBS",
    "LLM_LANE",
    "MAX_SEGMENTS",
    "MAX_TRANSCRIPT_BYTES",
    "PIPELINE",
    "Conversation",
    "ConversationCompleted",
    "Extractor",
    "RetryPolicy",
    "RuleExtractor",
    "ServiceSettings",
    "Services",
    "SettingsError",
    "Store",
    "Structured",
    "TranscriptSegment",
    "WebhookFailed",
    "build_pipeline",
    "configure_logging",
    "cosine",
    "create_app",
    "embed",
    "load_settings",
]
