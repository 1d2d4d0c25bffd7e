"""Shared conversions: times, dates, field masks and page tokens."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

from loyalty_engine.domain.errors import InvalidArgument
from loyalty_engine.gen.loyalty.v1 import common_pb2

M = TypeVar("M", bound=Message)

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


_MAX_POSITION_ID = 200
_MAX_POSITION_SEQ = 2**63 - 1


def position_after(position: dict[str, Any] | None, key: str = "after") -> str:
    """The id a decoded page token resumes after ("" for the first page).

    Tokens are opaque but come back from clients: anything but an id of ours (a forged or
    truncated token) is INVALID_PAGE_TOKEN, never a failed query.
    """
    if position is None:
        return ""
    value = position.get(key)
    if not isinstance(value, str) or len(value) > _MAX_POSITION_ID or not value.isprintable():
        raise _malformed_token()
    return value


def position_before(position: dict[str, Any] | None, key: str = "before") -> int | None:
    """The sequence number a decoded page token resumes before (None for the first page)."""
    if position is None:
        return None
    value = position.get(key)
    # bool is an int to Python; a number past int64 would fail in the database instead.
    if type(value) is not int or not 0 <= value <= _MAX_POSITION_SEQ:
        raise _malformed_token()
    return value


def _malformed_token() -> InvalidArgument:
    return InvalidArgument.for_field("page_token", "is malformed", reason="INVALID_PAGE_TOKEN")


def reject_nul(message: Message, prefix: str = "") -> None:
    """INVALID_ARGUMENT naming the first string field, at any depth, that holds U+0000.

    No field of the API has a use for NUL, and PostgreSQL can neither store it in text nor
    compare text with it: without this the query fails and the call ends in INTERNAL.
    """
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        items = enumerate(value) if field.is_repeated else [(None, value)]
        for i, item in items:
            item_path = path if i is None else f"{path}[{i}]"
            if isinstance(item, Message):
                reject_nul(item, f"{item_path}.")
            elif isinstance(item, str) and "\0" in item:
                raise InvalidArgument.for_field(item_path, "must not contain NUL characters")


def require_field(message: Message, name: str, field: str) -> Any:
    """The message field `name`, or INVALID_ARGUMENT naming `field` when it is unset."""
    if not message.HasField(name):
        raise InvalidArgument.for_field(field, "is required")
    return getattr(message, name)


def merge_masked(mask: field_mask_pb2.FieldMask, source: M, current: M) -> M:
    """`current` with the fields `mask` names taken from `source` (AIP-134 update)."""
    merged = type(current)()
    merged.CopyFrom(current)
    mask.MergeMessage(source, merged, replace_message_field=True, replace_repeated_field=True)
    return merged
