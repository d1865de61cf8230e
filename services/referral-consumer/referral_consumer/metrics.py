"""The consumer's Prometheus metrics, built once per process on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from referral_runtime.outbox import OutboxMetrics
from referral_runtime.process_metrics import register_process_metrics


class ConsumerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        register_process_metrics(registry)
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
            "subscription.created carrying a code that attributes nothing",
            ["kind"],
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
            "Highwater minus position, per assigned partition",
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
