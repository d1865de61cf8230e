"""The scheduler's Prometheus metrics, built once per process on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from referral_runtime.build_info import register_build_info
from referral_runtime.outbox import OutboxMetrics
from referral_runtime.process_metrics import register_process_metrics


class SchedulerMetrics:
    """Decisions, cash, pass health, payouts close to ``pay_by``, and the outbox."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        registry = self.registry
        register_process_metrics(registry)
        register_build_info(registry)
        self.decisions = Counter(
            "referrals_scheduler_decisions",
            "Payout decisions recorded, by outcome (due/forfeited/ineligible) and reason",
            ["outcome", "reason"],
            registry=registry,
        )
        self.cash_due_cents = Counter(
            "referrals_scheduler_cash_due_cents",
            "Cash of payouts decided due, in integer cents, by the referee's plan family",
            ["plan_family"],
            registry=registry,
        )
        self.last_success = Gauge(
            "referrals_scheduler_last_success_timestamp_seconds",
            "Unix time at which the last decision pass completed",
            registry=registry,
        )
        self.due_soon = Gauge(
            "referrals_scheduler_due_soon",
            "payout.due messages not yet published whose pay_by is within 3 business days "
            "(overdue ones included)",
            registry=registry,
        )
        self.overdue_undecided = Gauge(
            "referrals_scheduler_overdue_undecided",
            "Referrals with a first payment still undecided although eligible_on + "
            "PAYOUT_SETTLE_DAYS + PAYOUT_GRACE_DAYS has passed: their money is late",
            registry=registry,
        )
        self.pass_duration = Histogram(
            "referrals_scheduler_pass_duration_seconds",
            "Duration of a decision pass",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=registry,
        )
        self.pass_failures = Counter(
            "referrals_scheduler_pass_failures",
            "Decision passes that failed (retried; committed chunks stay decided)",
            registry=registry,
        )
        self.ready = Gauge(
            "referrals_scheduler_ready",
            "1 when the database and the broker answer",
            registry=registry,
        )
        self.outbox = OutboxMetrics(registry)
