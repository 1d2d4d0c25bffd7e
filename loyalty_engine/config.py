"""Settings: environment variables with the LOYALTY_ prefix, overridable by CLI flags."""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class ConfigError(Exception):
    """A setting is wrong; the message names it, in one line."""


class Settings(BaseSettings):
    """Everything the service reads at start-up."""

    model_config = SettingsConfigDict(env_prefix="LOYALTY_", extra="ignore")

    database_url: str = Field(
        default="sqlite+aiosqlite:///./loyalty.db",
        description="SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB",
    )
    listen_address: str = Field(default="127.0.0.1:50051", description="host:port to serve on")
    grace_period_seconds: float = Field(default=10.0, ge=0, le=600)
    log_level: str = Field(default="INFO")
    db_pool_size: int = Field(default=10, ge=1, le=500)
    maintenance_interval_seconds: float = Field(
        default=3600.0, ge=0, description="how often serve runs expiry and tier reviews; 0 = never"
    )
    auth_required: bool = Field(
        default=True, description="require API keys (turn off only in tests)"
    )
    plaintext: bool = Field(default=False, description="serve without TLS; only when asked for")
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = Field(default="", description="require client certificates (mTLS)")
    max_message_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=256 * 1024 * 1024)
    max_concurrent_rpcs: int = Field(default=1000, ge=1, le=1_000_000)
    metrics_address: str = Field(default="", description="host:port for /metrics; empty = off")
    workers: int = Field(default=1, ge=1, le=64)
    group_commit: bool = Field(
        default=True, description="concurrent writes on members share one transaction and COMMIT"
    )
    group_commit_max_batch: int = Field(default=64, ge=1, le=1000)
    log_format: str = Field(default="json")
    rules_dir: str = Field(default="rules", description="directory of the rule files (YAML)")

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        try:
            url = make_url(value)
        except Exception as exc:
            raise ValueError(f"not a database URL: {exc}") from None
        if url.drivername not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
            raise ValueError(
                "use sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST:PORT/DB"
            )
        return value

    @field_validator("listen_address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be host:port, such as 127.0.0.1:50051 or [::]:50051")
        return value

    @field_validator("metrics_address")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return cls._host_port(value) if value else value

    @field_validator("log_format")
    @classmethod
    def _format(cls, value: str) -> str:
        if value not in ("json", "text"):
            raise ValueError("must be json or text")
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        upper = value.upper()
        if upper not in logging.getLevelNamesMapping():
            raise ValueError("must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return upper


def check_transport(settings: Settings) -> None:
    """TLS files exist, or plaintext was asked for: never plaintext by accident."""
    from pathlib import Path

    if settings.tls_cert_file or settings.tls_key_file:
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file"):
            path = getattr(settings, name)
            if (name != "tls_client_ca_file" or path) and not Path(path).is_file():
                raise ConfigError(f"invalid setting LOYALTY_{name.upper()}: no such file {path!r}")
        return
    if settings.tls_client_ca_file:
        raise ConfigError(
            "invalid setting LOYALTY_TLS_CLIENT_CA_FILE: needs LOYALTY_TLS_CERT_FILE and KEY_FILE"
        )
    if not settings.plaintext:
        raise ConfigError(
            "invalid setting LOYALTY_PLAINTEXT (--plaintext): set LOYALTY_TLS_CERT_FILE and "
            "LOYALTY_TLS_KEY_FILE, or ask for plaintext explicitly"
        )


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment and the given overrides (CLI flags); ConfigError if wrong."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "settings"
        raise ConfigError(
            f"invalid setting LOYALTY_{name.upper()} (--{name.replace('_', '-')}): {first['msg']}"
        ) from None
