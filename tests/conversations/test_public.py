"""The public face of afterwork.conversations."""

from __future__ import annotations

import afterwork.conversations as conversations


def test_all_matches_what_is_exported() -> None:
    """Every public name is in __all__, and every name in __all__ exists."""
    public = {name for name in vars(conversations) if not name.startswith("_")}
    assert set(conversations.__all__) == public - {"annotations"}
    assert all(hasattr(conversations, name) for name in conversations.__all__)
