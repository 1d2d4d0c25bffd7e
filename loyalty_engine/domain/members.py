"""Members: their profile, the keys they are known by, and erasure of personal data."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import date, datetime
from enum import StrEnum

from loyalty_engine.domain.errors import ViolationCollector


class MemberState(StrEnum):
    """A member's lifecycle."""

    ACTIVE = "ACTIVE"
    ERASED = "ERASED"


class IdentifierKind(StrEnum):
    """The keys a member can be looked up by; each is unique in its program."""

    EXTERNAL_ID = "EXTERNAL_ID"
    EMAIL = "EMAIL"
    PHONE = "PHONE"
    CARD_NUMBER = "CARD_NUMBER"


# Reason reported when another member of the program already holds the key.
TAKEN_REASONS = {
    IdentifierKind.EXTERNAL_ID: "EXTERNAL_ID_TAKEN",
    IdentifierKind.EMAIL: "EMAIL_TAKEN",
    IdentifierKind.PHONE: "PHONE_TAKEN",
    IdentifierKind.CARD_NUMBER: "CARD_NUMBER_TAKEN",
}

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
_PHONE = re.compile(r"^\+[1-9][0-9]{6,14}$")
_CARD = re.compile(r"^[A-Za-z0-9-]{1,64}$")
_PRINTABLE_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


@dataclass(frozen=True)
class Member:
    """A member's profile. Personal data fields are None once erased."""

    program_id: str
    member_id: str
    external_id: str
    given_name: str | None = None
    family_name: str | None = None
    email: str | None = None
    phone: str | None = None
    card_number: str | None = None
    birth_date: date | None = None
    join_time: datetime | None = None
    marketing_consent: bool = False
    state: MemberState = MemberState.ACTIVE
    tier_id: str | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None

    def identifiers(self) -> dict[IdentifierKind, str]:
        """The lookup keys this member holds now."""
        keys = {
            IdentifierKind.EXTERNAL_ID: self.external_id,
            IdentifierKind.EMAIL: self.email,
            IdentifierKind.PHONE: self.phone,
            IdentifierKind.CARD_NUMBER: self.card_number,
        }
        return {kind: value for kind, value in keys.items() if value}

    def erased(self, now: datetime) -> Member:
        """The member without personal data; the external id and card stay for the ledger."""
        return replace(
            self,
            given_name=None,
            family_name=None,
            email=None,
            phone=None,
            birth_date=None,
            marketing_consent=False,
            state=MemberState.ERASED,
            update_time=now,
        )


def normalize_identifier(kind: IdentifierKind, value: str) -> str:
    """The stored form of a lookup key: e-mails compare case-insensitively."""
    return value.strip().lower() if kind is IdentifierKind.EMAIL else value.strip()


def validate_profile(member: Member, today: date, prefix: str = "member") -> None:
    """Raise one INVALID_ARGUMENT naming every bad profile field."""
    errors = ViolationCollector()
    if not _PRINTABLE_ID.match(member.external_id):
        errors.add(f"{prefix}.external_id", "is required: 1-200 printable characters, no spaces")
    for field_name in ("given_name", "family_name"):
        value = getattr(member, field_name)
        if value is not None and (len(value) > 200 or any(ord(c) < 32 for c in value)):
            errors.add(
                f"{prefix}.{field_name}", "must be at most 200 characters, no control characters"
            )
    if member.email is not None and (len(member.email) > 320 or not _EMAIL.match(member.email)):
        errors.add(f"{prefix}.email", "must be an e-mail address")
    if member.phone is not None and not _PHONE.match(member.phone):
        errors.add(f"{prefix}.phone", "must be in E.164 form, such as +4915112345678")
    if member.card_number is not None and not _CARD.match(member.card_number):
        errors.add(f"{prefix}.card_number", "must be 1-64 of A-Z, a-z, 0-9 and '-'")
    if member.birth_date is not None and not (date(1900, 1, 1) <= member.birth_date <= today):
        errors.add(f"{prefix}.birth_date", "must be a past date after 1900-01-01")
    errors.raise_if_any()
