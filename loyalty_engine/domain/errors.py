"""Domain errors: each carries a stable reason, never a transport code.

The gRPC layer maps the error class to a status code (one table, in
``loyalty_engine.api.errors``); the reason travels to the client as
``google.rpc.ErrorInfo.reason``.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``purchase.total_minor``) and why."""

    field: str
    description: str


@dataclass
class DomainError(Exception):
    """Base of every error the engine reports to a caller on purpose."""

    reason: str
    message: str
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message


@dataclass
class InvalidArgument(DomainError):
    """The request itself is malformed; retrying it unchanged cannot succeed."""

    violations: list[FieldViolation] = field(default_factory=list)

    @classmethod
    def for_field(
        cls, field_path: str, description: str, reason: str = "INVALID_FIELD"
    ) -> InvalidArgument:
        """An error about a single field."""
        return cls(
            reason=reason,
            message=f"{field_path}: {description}",
            metadata={"field": field_path},
            violations=[FieldViolation(field_path, description)],
        )


class NotFound(DomainError):
    """The named resource does not exist (or is not visible to the caller)."""


class AlreadyExists(DomainError):
    """The resource the request would create exists already."""


class FailedPrecondition(DomainError):
    """The system is not in a state where the request can run (not enough points, ...)."""


class Aborted(DomainError):
    """A conflict with a concurrent request; the caller may retry with the same request id."""


class OutOfRange(DomainError):
    """A value is valid in kind but outside what the program accepts now (a too-late sale)."""


class PermissionDenied(DomainError):
    """The caller is known but may not do this."""


class Unauthenticated(DomainError):
    """The caller did not prove who it is."""


class ResourceExhausted(DomainError):
    """A limit was reached (concurrency, quota)."""


class Unavailable(DomainError):
    """A dependency (the database) is out of reach for now; retry with the same request id."""


class ViolationCollector:
    """Collects field violations so a request reports all its bad fields at once."""

    def __init__(self) -> None:
        self.violations: list[FieldViolation] = []
        self.first_reason: str | None = None

    def add(self, field_path: str, description: str, reason: str = "INVALID_FIELD") -> None:
        """Record one bad field."""
        self.violations.append(FieldViolation(field_path, description))
        if self.first_reason is None:
            self.first_reason = reason

    def raise_if_any(self) -> None:
        """Raise one InvalidArgument naming every bad field, if there is any."""
        if not self.violations:
            return
        first = self.violations[0]
        message = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        raise InvalidArgument(
            reason=self.first_reason or "INVALID_FIELD",
            message=message,
            metadata={"field": first.field},
            violations=list(self.violations),
        )
