"""Resource names (AIP-122): parsing and formatting of `programs/{program}/...` paths."""

from __future__ import annotations

import re
from dataclasses import dataclass

from loyalty_engine.domain.errors import InvalidArgument

# Ids chosen by clients for programs, tiers, rules and rewards (AIP-122 style).
_RESOURCE_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
# Member ids may also be generated hex strings or carry underscores from the shop's system.
_MEMBER_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def check_resource_id(value: str, field: str) -> str:
    """Return `value` if it is a valid client-chosen id, else raise INVALID_ARGUMENT."""
    if not _RESOURCE_ID.match(value):
        raise InvalidArgument.for_field(
            field, "must be 1-63 characters of a-z, 0-9 and '-', starting with a letter"
        )
    return value


def check_member_id(value: str, field: str) -> str:
    """Return `value` if it is a valid member id, else raise INVALID_ARGUMENT."""
    if not _MEMBER_ID.match(value):
        raise InvalidArgument.for_field(
            field,
            "must be 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
        )
    return value


def _invalid_name(field: str, expected: str) -> InvalidArgument:
    return InvalidArgument.for_field(
        field, f"must be a resource name of the form {expected}", reason="INVALID_NAME"
    )


def parse_program(name: str, field: str = "name") -> str:
    """`programs/{program}` -> program id."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "programs" or not _RESOURCE_ID.match(parts[1]):
        raise _invalid_name(field, "programs/{program}")
    return parts[1]


@dataclass(frozen=True)
class ChildName:
    """A resource directly under a program: `programs/{program}/{collection}/{id}`."""

    program_id: str
    resource_id: str


def parse_child(name: str, collection: str, field: str = "name") -> ChildName:
    """Parse `programs/{program}/{collection}/{id}` for tiers, rules, rewards, offers, segments."""
    parts = name.split("/")
    pattern = f"programs/{{program}}/{collection}/{{id}}"
    if len(parts) != 4 or parts[0] != "programs" or parts[2] != collection:
        raise _invalid_name(field, pattern)
    if not _RESOURCE_ID.match(parts[1]) or not _MEMBER_ID.match(parts[3]):
        raise _invalid_name(field, pattern)
    return ChildName(parts[1], parts[3])


@dataclass(frozen=True)
class MemberName:
    """A member: `programs/{program}/members/{member}`."""

    program_id: str
    member_id: str

    def __str__(self) -> str:
        return member_name(self.program_id, self.member_id)


def parse_member(name: str, field: str = "member") -> MemberName:
    """Parse `programs/{program}/members/{member}`."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "programs"
        or parts[2] != "members"
        or not _RESOURCE_ID.match(parts[1])
        or not _MEMBER_ID.match(parts[3])
    ):
        raise _invalid_name(field, "programs/{program}/members/{member}")
    return MemberName(parts[1], parts[3])


def program_name(program_id: str) -> str:
    """Format `programs/{program}`."""
    return f"programs/{program_id}"


def member_name(program_id: str, member_id: str) -> str:
    """Format `programs/{program}/members/{member}`."""
    return f"programs/{program_id}/members/{member_id}"


def child_name(program_id: str, collection: str, resource_id: str) -> str:
    """Format `programs/{program}/{collection}/{id}`."""
    return f"programs/{program_id}/{collection}/{resource_id}"


@dataclass(frozen=True)
class MemberChildName:
    """A resource under a member: `programs/{program}/members/{member}/{collection}/{id}`."""

    program_id: str
    member_id: str
    resource_id: str


def parse_member_child(name: str, collection: str, field: str = "name") -> MemberChildName:
    """Parse `programs/{program}/members/{member}/{collection}/{id}` (redemptions, ...)."""
    parts = name.split("/")
    pattern = f"programs/{{program}}/members/{{member}}/{collection}/{{id}}"
    if (
        len(parts) != 6
        or parts[0] != "programs"
        or parts[2] != "members"
        or parts[4] != collection
        or not _RESOURCE_ID.match(parts[1])
        or not _MEMBER_ID.match(parts[3])
        or not _MEMBER_ID.match(parts[5])
    ):
        raise _invalid_name(field, pattern)
    return MemberChildName(parts[1], parts[3], parts[5])
