"""Batches of events, shared by the events API and the Segment-compatible calls: each item is
validated on its own, the valid ones are stored together, and the answer reports every item."""

from typing import Any

from fastapi import Request
from pydantic import ValidationError

from api.errors import field_errors
from models.events import BatchItemResult, BatchResult, EventIn


def validate_items(raw: list[Any], field: str, parse) -> tuple[list, list[BatchItemResult]]:
    """Validates each item on its own: [(index, parsed)], and a rejection per bad item."""
    valid, rejected = [], []
    for i, item in enumerate(raw):
        try:
            valid.append((i, parse(item)))
        except ValidationError as exc:
            errors = field_errors(exc, prefix=f"{field}[{i}].")
            rejected.append(BatchItemResult(index=i, status="rejected", errors=errors))
        except ValueError as exc:
            rejected.append(
                BatchItemResult(
                    index=i,
                    status="rejected",
                    errors=[{"field": f"{field}[{i}]", "reason": str(exc)}],
                )
            )
    return valid, rejected


async def batch_response(
    request: Request, valid: list[tuple[int, EventIn]], rejected: list[BatchItemResult], source: str
) -> BatchResult:
    results = list(rejected)
    if valid:
        stored = await request.app.state.ingest.submit([e for _, e in valid], source)
        for (i, _), r in zip(valid, stored, strict=True):
            results.append(
                BatchItemResult(
                    index=i,
                    status="duplicate" if r.duplicate else "accepted",
                    event_id=r.event_id,
                    profile_id=r.profile_id,
                )
            )
    results.sort(key=lambda r: r.index)
    counts = {s: sum(1 for r in results if r.status == s) for s in ("accepted", "duplicate")}
    return BatchResult(
        accepted=counts["accepted"],
        duplicates=counts["duplicate"],
        rejected=len(rejected),
        results=results,
    )
