"""Keeping secrets out of outcomes and logs: URLs lose their credentials and query strings.

Webhook and task-integration URLs are the users' own, and often carry a secret: a
``?token=`` in the query, a ``user:password@`` in front of the host. Anything the service
reports (an outcome's error, a log line) shows such a URL as ``https://***@host/path?***``.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

_URL = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/?#@]*@)?(?P<rest>[^\s?#]*)"
    r"(?P<query>\?[^\s#]*)?(?P<fragment>#\S*)?"
)


def redact(text: str) -> str:
    """``text`` with every URL's credentials, query string and fragment replaced by ``***``."""
    return _URL.sub(_redacted, text)


def _redacted(match: re.Match[str]) -> str:
    user = "***@" if match["user"] else ""
    query = "?***" if match["query"] else ""
    fragment = "#***" if match["fragment"] else ""
    return f"{match['scheme']}{user}{match['rest']}{query}{fragment}"


def redact_event(_: object, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """A structlog processor: redact URLs in every string of the event, nested ones too."""
    for key, value in event.items():
        event[key] = _walk(value)
    return event


def _walk(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: _walk(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(item) for item in value)
    return value
