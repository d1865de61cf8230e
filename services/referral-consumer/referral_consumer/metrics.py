"""The consumer's Prometheus metrics, built once per process on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from referral_runtime.build_info import register_build_info
from referral_runtime.outbox import OutboxMetrics
from referral_runtime.process_metrics import register_process_metrics


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        register_process_metrics(registry)
        register_build_info(registry)
        self.events = Counter(
            "referrals_consumer_events",
            "Consumed messages by outcome: applied + duplicate + dead_lettered = consumed",
            ["topic", "event_type", "outcome"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "referrals_consumer_dead_letters",
            "Messages sent to the dead-letter topic",
            ["topic", "reason"],
            registry=registry,
        )
        self.attributions = Counter(
            "referrals_consumer_attributions",
            "Referral rows created or changed, by resulting status and reason",
            ["result", "reason"],
            registry=registry,
        )
        self.unknown_codes = Counter(
            "referrals_consumer_unknown_codes",
            "subscription.created applied with a code that attributes nothing, by kind: "
            "unknown (nobody's code), malformed (cannot be a code), revoked",
            ["kind"],
            registry=registry,
        )
        self.unknown_references = Counter(
            "referrals_consumer_unknown_references",
            "invoice.paid / subscription.cancelled applied for an account (kind=account) or a "
            "subscription of a known account (kind=subscription) not seen yet. Counted once, at "
            "apply time: billing topics are not ordered, so one that arrives before its "
            "subscription.created counts here although the subscription may arrive later",
            ["event_type", "kind"],
            registry=registry,
        )
        self.foreign_currency = Counter(
            "referrals_events_in_foreign_currency",
            "subscription.created / invoice.paid applied in a currency other than "
            "PROGRAM_CURRENCY, by that currency (applied as usual, never dead-lettered; "
            "payouts and credits stay in the program currency)",
            ["currency"],
            registry=registry,
        )
        self.subscription_conflicts = Counter(
            "referrals_consumer_subscription_conflicts",
            "subscription.created for a subscription already recorded, under another event id "
            "and with other facts: recorded in subscription_conflicts, the first kept (counted "
            "as a duplicate in referrals_consumer_events)",
            registry=registry,
        )
        self.subscriptions_resent = Counter(
            "referrals_consumer_subscriptions_resent",
            "subscription.created for a subscription already recorded, under another event id "
            "but with the same facts: a duplicate (counted as one in referrals_consumer_events)",
            registry=registry,
        )
        self.free_text = Counter(
            "referrals_consumer_free_text_amended",
            "Applied events whose free text (a plan id, a cancellation reason, an email's "
            "local part) could not be stored as it was: action=nul_removed (NUL characters "
            "removed) or cut (cut to its limit; an email to its domain). The event is applied; "
            "free text never dead-letters a money fact",
            ["event_type", "field", "action"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "referrals_consumer_batch_size",
            "Messages per processed batch",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=registry,
        )
        self.batch_duration = Histogram(
            "referrals_consumer_batch_duration_seconds",
            "Time from batch received to its transaction committed",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=registry,
        )
        self.event_age = Histogram(
            "referrals_consumer_event_age_seconds",
            "Now minus the event's occurred_at when applied",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 5, 30, 60, 300, 3600, 86400),
            registry=registry,
        )
        self.lag = Gauge(
            "referrals_consumer_lag",
            "Messages not yet applied, per assigned partition: the high watermark minus the "
            "offset up to which the partition is applied (refreshed after every commit and every second)",
            ["topic", "partition"],
            registry=registry,
        )
        self.partition_stalled = Gauge(
            "referrals_consumer_partition_stalled_seconds",
            "Seconds this partition has had unapplied messages while its applied (committed) "
            "offset did not move; 0 while nothing waits, counted from this member's assignment "
            "at most (refreshed after every commit and every second)",
            ["topic", "partition"],
            registry=registry,
        )
        self.db_retries = Counter(
            "referrals_consumer_db_retries",
            "Batch transactions retried after a database error",
            registry=registry,
        )
        self.commit_failures = Counter(
            "referrals_consumer_commit_failures",
            "Offset commits that failed (the batch is redelivered and deduplicated)",
            registry=registry,
        )
        self.rebalances = Counter(
            "referrals_consumer_rebalances", "Partition revocations seen", registry=registry
        )
        self.assigned_partitions = Gauge(
            "referrals_consumer_assigned_partitions",
            "Partitions assigned to this member",
            registry=registry,
        )
        self.ready = Gauge(
            "referrals_consumer_ready",
            "1 when consuming and the database answers",
            registry=registry,
        )
        self.outbox = OutboxMetrics(registry)

    def observe_references(
        self,
        unknown_references: dict[tuple[str, str], int],
        foreign_currency: dict[str, int],
    ) -> None:
        """Count a committed batch's unknown references and foreign-currency events."""
        for (event_type, kind), n in unknown_references.items():
            self.unknown_references.labels(event_type, kind).inc(n)
        for currency, n in foreign_currency.items():
            self.foreign_currency.labels(currency).inc(n)
