"""The scheduler's Prometheus metrics, built once per process on its own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from referral_events import PAYOUT_STATUS_EVENT_TYPES, DeadLetterReason
from referral_program.payouts import Outcome
from referral_program.table import PayoutStatus
from referral_runtime.build_info import register_build_info
from referral_runtime.outbox import OutboxMetrics
from referral_runtime.process_metrics import register_process_metrics


class SchedulerMetrics:
    """Decisions, cash, pass health, payouts close to ``pay_by``, finance's reports, the outbox."""

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
        # Decisions only on complete facts (payout_scheduler.completeness).
        self.facts_wait = Histogram(
            "referrals_scheduler_facts_wait_seconds",
            "How long a decision pass waited for the consumer group to apply every billing "
            "event published when it began (held-back passes included)",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=registry,
        )
        self.held_back = Gauge(
            "referrals_scheduler_held_back",
            "1 when the last decision pass was held back (the consumer group had not applied "
            "the billing events published before it began: nothing was decided), else 0; NaN "
            "until this process has read it",
            registry=registry,
        )
        self.held_back_since = Gauge(
            "referrals_scheduler_held_back_since_timestamp_seconds",
            "Unix time since which every decision pass has been held back (kept in the "
            "database across restarts); 0 when the last pass was not held back, NaN until "
            "this process has read it",
            registry=registry,
        )
        # Unknown, not "not held back", until read from the database: a restart must not
        # look like a pass that decided (the held-back alert would go quiet).
        self.held_back.set(float("nan"))
        self.held_back_since.set(float("nan"))
        self.unapplied_billing_events = Gauge(
            "referrals_scheduler_unapplied_billing_events",
            "Billing messages published before the last decision pass began that the "
            "consumer group had not applied when that pass stopped waiting",
            registry=registry,
        )
        self.passes_held_back = Counter(
            "referrals_scheduler_passes_held_back",
            "Decision passes held back: they decided nothing, and are tried again soon",
            registry=registry,
        )
        self.status = StatusMetrics(registry)


#: What a consumed status message can end as besides a payout outcome.
DUPLICATE, DEAD_LETTERED = "duplicate", "dead_lettered"


class StatusMetrics:
    """Finance's reports (``finance.payout.status``) and where the due payouts stand."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "referrals_payout_status_events",
            "payout.paid / payout.failed consumed, by what each did: paid, failed, repeated, "
            "failed_after_paid, superseded, paid_superseded_attempt, unknown_attempt, "
            "unknown_payout, mismatched, paid_twice, or duplicate (redelivered) and "
            "dead_lettered (event_type unknown); they add up to what was consumed",
            ["event_type", "outcome"],
            registry=registry,
        )
        # Every series exists from the start, so the first mismatch is an increase from 0
        # (an alert on increase() never sees a series that appears at 1).
        for event_type in PAYOUT_STATUS_EVENT_TYPES:
            for outcome in [*Outcome, DUPLICATE]:
                self.events.labels(event_type, outcome)
        self.events.labels("unknown", DEAD_LETTERED)
        self.dead_letters = Counter(
            "referrals_payout_status_dead_letters",
            "Status messages sent to the dead-letter topic, by reason",
            ["reason"],
            registry=registry,
        )
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason.value)
        self.payouts = Gauge(
            "referrals_payouts",
            "Due payouts by where they stand with finance: due, paid, failed (waiting for "
            "support to re-issue), mismatched (paid another amount or currency), paid_twice",
            ["status"],
            registry=registry,
        )
        self.payouts_cents = Gauge(
            "referrals_payouts_cents",
            "Cash of the due payouts by status, in integer cents",
            ["status"],
            registry=registry,
        )
        for status in PayoutStatus:
            self.payouts.labels(status.value)
            self.payouts_cents.labels(status.value)
        self.overdue = Gauge(
            "referrals_payouts_overdue",
            "Due payouts still unpaid after their pay_by day ended (program time zone): "
            "the program's promise to the referrer is broken",
            registry=registry,
        )
        self.batch_duration = Histogram(
            "referrals_payout_status_batch_duration_seconds",
            "Time from a batch of status messages received to its transaction committed",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self.lag = Gauge(
            "referrals_payout_status_lag",
            "Highwater minus position on the status topic, per partition this replica owns",
            ["partition"],
            registry=registry,
        )
        self.assigned_partitions = Gauge(
            "referrals_payout_status_assigned_partitions",
            "Partitions of the status topic assigned to this replica",
            registry=registry,
        )
        self.db_retries = Counter(
            "referrals_payout_status_db_retries",
            "Status batch transactions retried after a database error",
            registry=registry,
        )
        self.commit_failures = Counter(
            "referrals_payout_status_commit_failures",
            "Offset commits on the status topic that failed (the batch is redelivered and "
            "deduplicated)",
            registry=registry,
        )
