"""A deterministic text embedding by feature hashing: no model, same vector on every run.

Each word and each pair of adjacent words is hashed (blake2b, so the result does not depend
on ``PYTHONHASHSEED``) into one of ``DIMENSIONS`` buckets with a sign taken from the hash. The
vector is then scaled to unit length, so the dot product of two vectors is their cosine.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from array import array

DIMENSIONS = 256
_WORD = re.compile(r"[a-z0-9']+")


def _features(text: str) -> list[str]:
    words = _WORD.findall(text.lower())
    return words + [f"{a} {b}" for a, b in itertools.pairwise(words)]


def embed(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """The unit-length feature-hashing vector of ``text`` (all zeros for empty text)."""
    vector = [0.0] * dimensions
    for feature in _features(text):
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        vector[value % dimensions] += 1.0 if (value >> 63) & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm else vector


def cosine(a: list[float], b: list[float]) -> float:
    """The cosine of two unit vectors (their dot product)."""
    return sum(x * y for x, y in zip(a, b, strict=True))


def to_blob(vector: list[float]) -> bytes:
    """The vector as little-endian float32 bytes, as the store keeps it."""
    return array("f", vector).tobytes()


def from_blob(blob: bytes) -> list[float]:
    values = array("f")
    values.frombytes(blob)
    return list(values)
