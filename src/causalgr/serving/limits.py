"""What one HTTP request may hold (kept apart from `http.py` so the CLI reads it without FastAPI)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Larger requests are refused: 422 naming the field, or 413 for the body."""

    max_candidates: int = 2_000
    max_history_events: int = 10_000  # events in one request; the ranker keeps the last max_len - 1
    max_body_bytes: int = 4 << 20
