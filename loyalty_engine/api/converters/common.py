"""Shared conversions: times, dates, field masks and page tokens."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, date, datetime
from typing import Any

from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.gen.loyalty.v1 import common_pb2

_MIN_SECONDS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
_MAX_SECONDS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())


def to_datetime(ts: timestamp_pb2.Timestamp, field: str) -> datetime:
    """A Timestamp as an aware UTC datetime; INVALID_ARGUMENT when out of range."""
    if not _MIN_SECONDS <= ts.seconds <= _MAX_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgument.for_field(field, "is not a valid timestamp (years 1-9999)")
    return ts.ToDatetime(tzinfo=UTC)


def optional_datetime(message: Message, name: str, field: str) -> datetime | None:
    """The timestamp field `name` of `message`, or None when unset."""
    if not message.HasField(name):
        return None
    return to_datetime(getattr(message, name), field)


def set_timestamp(ts: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    """Fill a Timestamp from a datetime (left unset for None)."""
    if value is not None:
        ts.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))


def to_date(message: common_pb2.Date, field: str) -> date:
    """A loyalty.v1.Date as a date; INVALID_ARGUMENT when it is not a real day."""
    try:
        return date(message.year, message.month, message.day)
    except (ValueError, OverflowError):
        raise InvalidArgument.for_field(field, "is not a valid calendar date") from None


def from_date(value: date | None) -> common_pb2.Date | None:
    """A date as a loyalty.v1.Date."""
    if value is None:
        return None
    return common_pb2.Date(year=value.year, month=value.month, day=value.day)


def checked_mask(
    mask: field_mask_pb2.FieldMask,
    message_type: type[Message],
    allowed: set[str],
    field: str = "update_mask",
) -> field_mask_pb2.FieldMask:
    """The update mask, if every path is one the caller may change."""
    if not mask.paths:
        raise InvalidArgument.for_field(
            field, "must name the fields to update", reason="INVALID_UPDATE_MASK"
        )
    for path in mask.paths:
        top = path.split(".", 1)[0]
        if top not in allowed and path not in allowed:
            raise InvalidArgument.for_field(
                field,
                f"{path!r} cannot be updated; allowed: {', '.join(sorted(allowed))}",
                reason="INVALID_UPDATE_MASK",
            )
    if not mask.IsValidForDescriptor(message_type.DESCRIPTOR):  # type: ignore[arg-type]
        raise InvalidArgument.for_field(
            field, "names a field that does not exist", reason="INVALID_UPDATE_MASK"
        )
    return mask


def encode_page_token(position: dict[str, Any]) -> str:
    """An opaque token for the next page."""
    return base64.urlsafe_b64encode(json.dumps(position, separators=(",", ":")).encode()).decode()


def decode_page_token(token: str, query: dict[str, Any]) -> dict[str, Any] | None:
    """The position a token points at; INVALID_ARGUMENT if it is not ours or for another query."""
    if not token:
        return None
    try:
        position = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, binascii.Error, UnicodeError):
        position = None
    if not isinstance(position, dict) or position.get("q") != query:
        raise InvalidArgument.for_field(
            "page_token", "is not a token of this list query", reason="INVALID_PAGE_TOKEN"
        )
    return position
