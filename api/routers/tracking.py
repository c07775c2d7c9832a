"""Segment-compatible tracking: /v1/identify, /v1/track, /v1/batch (write key as basic auth user).

Responses are 200 (not 202) because Segment's SDKs treat anything else as a failed upload.
Invalid messages are reported and skipped; the valid ones in the same call are stored.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request
from starlette.concurrency import run_in_threadpool

from api.deps import EngineDep, require_ingest_key
from api.errors import ApiError, invalid
from api.event_batches import batch_response, validate_items
from herald.ingest.identify_calls import identify
from herald.ingest.tracking_calls import identify_to_profile, track_to_event
from models.events import MAX_BATCH_EVENTS

router = APIRouter(
    prefix="/v1", tags=["tracking (Segment-compatible)"], dependencies=[Depends(require_ingest_key)]
)

_IGNORED_TYPES = {"page", "screen", "group", "alias"}


async def _process(request: Request, engine, messages: list[Any], field: str) -> dict:
    if not messages:
        raise invalid(field, "must hold at least one message")
    if len(messages) > MAX_BATCH_EVENTS:
        raise invalid(field, f"at most {MAX_BATCH_EVENTS} messages per call (got {len(messages)})")

    def kind(m: Any) -> str | None:
        return m.get("type") if isinstance(m, dict) else None

    def parse(message: Any):
        if not isinstance(message, dict):
            raise ValueError("each message must be an object")
        if kind(message) == "identify":
            return identify_to_profile(message)
        if kind(message) == "track":
            return track_to_event(message)
        raise ValueError(f"unsupported message type {kind(message)!r}")

    ignored = sum(1 for m in messages if kind(m) in _IGNORED_TYPES)
    valid, rejected = validate_items(messages, field, parse)
    identifies = [(i, v) for i, v in valid if kind(messages[i]) == "identify"]
    tracks = [(i, v) for i, v in valid if kind(messages[i]) == "track"]
    rejected = [r for r in rejected if kind(messages[r.index]) not in _IGNORED_TYPES]

    if not identifies and not tracks and rejected:
        raise ApiError(
            400,
            "invalid_request",
            "no message in the request is valid",
            [e.model_dump() for r in rejected for e in r.errors or []],
        )
    # Identifies first, so a track right after an identify lands on the identified profile.
    if identifies:
        await run_in_threadpool(identify, engine, [p for _, p in identifies])
    report = await batch_response(request, tracks, [], "segment")
    return {
        "success": True,
        "identified": len(identifies),
        "tracked": report.accepted,
        "duplicates": report.duplicates,
        "ignored": ignored,
        "rejected": [r.model_dump(exclude_none=True) for r in rejected],
    }


@router.post("/batch", summary="Segment batch upload (identify and track messages)")
async def segment_batch(
    request: Request, engine: EngineDep, batch: Annotated[list[Any], Body(embed=True)]
) -> dict:
    return await _process(request, engine, batch, "batch")


@router.post("/identify", summary="Segment identify")
async def segment_identify(
    request: Request, engine: EngineDep, message: dict[str, Any] = Body()
) -> dict:
    return await _process(request, engine, [{**message, "type": "identify"}], "message")


@router.post("/track", summary="Segment track")
async def segment_track(
    request: Request, engine: EngineDep, message: dict[str, Any] = Body()
) -> dict:
    return await _process(request, engine, [{**message, "type": "track"}], "message")
