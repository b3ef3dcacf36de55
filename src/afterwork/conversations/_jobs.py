"""The seven post-processing jobs of a completed conversation, as one afterwork pipeline.

``Jobs`` holds the services the jobs use (the store, the extractor, the shared HTTP client),
and ``build_pipeline`` registers its methods, so a pipeline holds no global state and each test
builds one over its own database. Blocking work goes through the thread budget: sync jobs run
in a budget thread, and async jobs hand every blocking call to ``ctx.run_sync``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

import afterwork as aw

from . import _personas, _writes
from ._embedding import embed
from ._extractor import Extractor
from ._models import ConversationCompleted, is_new
from ._redact import redact
from ._store import Store, utc_now
from ._webhook import RetryPolicy, deliver, post_once

PIPELINE = "conversation.completed"
#: The lane of the jobs that call the extractor: a bulkhead for the (slow) language model.
LLM_LANE = "llm"
#: The lane of outgoing HTTP calls (webhooks, task integrations): one user's hanging
#: endpoint then holds an HTTP token, never one of the language model's.
HTTP_LANE = "http"
_LLM: dict[str, Any] = {"lane": LLM_LANE, "retries": 2, "backoff": 0.2}
#: Each job's options, in the order of the seed's seven jobs. The webhook's retries follow
#: its own schedule (see _webhook), set from the services when the pipeline is built.
JOB_OPTIONS: dict[str, dict[str, Any]] = {
    "save_structured_vector": {"when": is_new},
    "extract_memories": _LLM,
    "extract_trends": _LLM,
    "save_action_items": _LLM,
    "update_goal_progress": {},
    "conversation_created_webhook": {"when": is_new},
    "update_personas": {"when": is_new},
}
JOBS = tuple(JOB_OPTIONS)


@dataclass
class Services:
    """What the jobs work with. The service owns them and closes them after the dispatcher."""

    store: Store
    extractor: Extractor
    client: httpx.AsyncClient
    webhook_policy: RetryPolicy = field(default_factory=RetryPolicy)
    persona_window_s: int = 0
    job_timeout_s: float = 60.0
    clock: Callable[[], datetime] = utc_now


def conversation_key(event: ConversationCompleted) -> str:
    return event.conversation.id


def build_pipeline(
    services: Services, only: Collection[str] | None = None
) -> aw.Pipeline[ConversationCompleted]:
    """The pipeline of the seven jobs (or of the ``only`` ones, for focused tests)."""
    unknown = sorted(set(only or ()) - set(JOBS))
    if unknown:
        raise ValueError(f"unknown job(s) {', '.join(unknown)}; the jobs are {', '.join(JOBS)}")
    pipeline = aw.Pipeline(PIPELINE, event=ConversationCompleted, key=conversation_key)
    jobs = Jobs(services)
    # Only the waits the webhook asks for are retried: a refusal (a 4xx) is final.
    webhook = {"retries": len(services.webhook_policy.delays), "retry_on": aw.RetryLater}
    for name, options in JOB_OPTIONS.items():
        if only is None or name in only:
            extra = webhook if name == "conversation_created_webhook" else {}
            pipeline.job(
                getattr(jobs, name), **{"timeout": services.job_timeout_s, **options, **extra}
            )
    return pipeline


class Jobs:
    """The jobs, bound to their services."""

    def __init__(self, services: Services) -> None:
        self.services = services
        self.store = services.store
        self.extractor = services.extractor

    def save_structured_vector(self, event: ConversationCompleted) -> None:
        """1. Embed title, overview and transcript; upsert the vector by conversation id."""
        conversation = event.conversation
        structured = conversation.structured
        text = f"{structured.title}\n{structured.overview}\n{conversation.transcript()}"
        _writes.save_vector(self.store, conversation, embed(text))

    async def extract_memories(self, event: ConversationCompleted, ctx: aw.JobContext) -> None:
        """2. Save the facts the user's memories lack; a reprocess replaces its earlier ones."""
        conversation = event.conversation
        facts = await ctx.run_sync(self.extractor.memories, conversation)
        added = await ctx.run_sync(self._save_memories, event, facts)
        ctx.log.debug("memories.saved", facts=len(facts), added=added)

    def _save_memories(self, event: ConversationCompleted, facts: list[str]) -> int:
        return _writes.save_memories(self.store, event.conversation, facts, replace=event.reprocess)

    def extract_trends(self, event: ConversationCompleted) -> None:
        """3. Count the conversation's topics and category on its user's UTC day."""
        topics = self.extractor.topics(event.conversation)
        _writes.save_trends(self.store, event.conversation, topics)

    async def save_action_items(self, event: ConversationCompleted, ctx: aw.JobContext) -> None:
        """4. Save the structured and the detected items; spawn ``auto_sync`` to export them."""
        conversation = event.conversation
        detected = await ctx.run_sync(self.extractor.tasks, conversation)
        pending = await ctx.run_sync(
            _writes.save_action_items,
            self.store,
            conversation,
            conversation.structured.action_items,
            detected,
        )
        url = await ctx.run_sync(self.store.webhook_url, conversation.uid, "tasks")
        if pending and url is not None:
            ctx.spawn(self.auto_sync, url, pending, name="auto_sync", lane=HTTP_LANE)

    async def auto_sync(
        self, url: str, items: list[_writes.ActionItem], ctx: aw.JobContext
    ) -> None:
        """4a. POST the unexported items to the user's task integration; mark them exported."""
        payload = {"items": [{"id": item.id, "description": item.description} for item in items]}
        attempt = await post_once(self.services.client, url, payload, ctx.idempotency_key)
        if not attempt.delivered:
            raise RuntimeError(
                f"task integration {redact(url)} did not take {len(items)} action item(s): "
                f"{attempt.error}; they stay unexported and go with the next sync"
            )
        await ctx.run_sync(_writes.mark_exported, self.store, [item.id for item in items])

    def update_goal_progress(self, event: ConversationCompleted) -> None:
        """5. Move the goals the conversation mentions, once per conversation."""
        _writes.record_goal_progress(self.store, event.conversation)

    async def conversation_created_webhook(
        self, event: ConversationCompleted, ctx: aw.JobContext
    ) -> None:
        """6. Tell the user's webhook, if any, that the conversation was created."""
        conversation = event.conversation
        url = await ctx.run_sync(self.store.webhook_url, conversation.uid, "conversation_created")
        if url is None:
            return
        payload = {
            "event": "conversation.created",
            "conversation": conversation.model_dump(
                mode="json", include={"id", "uid", "created_at", "language", "structured"}
            ),
        }
        await deliver(
            ctx,
            self.services.client,
            self.store,
            self.services.webhook_policy,
            uid=conversation.uid,
            url=url,
            payload=payload,
        )

    async def update_personas(self, event: ConversationCompleted, ctx: aw.JobContext) -> None:
        """7. Once per user per window, rebuild each persona's prompt in a child of its own."""
        uid = event.conversation.uid
        won = await ctx.run_sync(
            _personas.claim_refresh,
            self.store,
            uid,
            event.conversation.id,
            self.services.clock(),
            self.services.persona_window_s,
        )
        if not won:
            ctx.log.info("personas.rate_limited", uid=uid)
            return
        for persona_id in await ctx.run_sync(_personas.personas_of, self.store, uid):
            ctx.spawn(_personas.refresh_persona, self.store, persona_id, name=persona_id)
