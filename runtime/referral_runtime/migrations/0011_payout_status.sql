-- Finance reports back: where each due payout stands (paid, failed, re-issued).
--
-- payouts keeps one row per referral. For a due one it now also holds the
-- current attempt and where it stands with finance, recomputed from finance's
-- reports (payout_reports) by referral_program.payouts, so a plain select
-- answers "paid on 2027-04-12, reference ...". Forfeited and ineligible rows
-- have no status.
alter table payouts
    add column attempt          int not null default 1 check (attempt >= 1),
    add column status           text check (status in ('due', 'paid', 'failed', 'mismatched', 'paid_twice')),
    add column paid_at          timestamptz,   -- the earliest payment reported
    add column paid_attempt     int,
    add column paid_amount_cents bigint,       -- as finance reported it
    add column paid_currency    text,
    add column paid_reference   text,          -- finance's id of the transfer
    add column failed_at        timestamptz,   -- when failed: the current attempt's failure
    add column failure_reason   text,
    add column status_changed_at timestamptz;
update payouts set status = 'due' where outcome = 'due';
alter table payouts add constraint payouts_status_of_due_only
    check ((outcome = 'due') = (status is not null));

-- Every payout.paid / payout.failed applied, once per event id: the inbox of
-- finance's topic and the facts a payout's status is computed from. A report
-- for a payout_id never announced is kept too (outcome unknown_payout).
create table payout_reports (
    event_id       uuid primary key,
    payout_id      uuid not null,
    attempt        int not null check (attempt >= 1),
    kind           text not null check (kind in ('paid', 'failed')),
    at             timestamptz not null,           -- paid_at / failed_at
    amount_cents   bigint check (amount_cents >= 0),
    currency       text,
    reference      text,
    reason         text,
    outcome        text not null,                  -- what it did when it arrived (referral_program.payouts.Outcome)
    topic          text not null,
    "partition"    int not null,
    "offset"       bigint not null,
    received_at    timestamptz not null default now(),
    check ((kind = 'paid') = (amount_cents is not null and currency is not null and reference is not null)),
    check ((kind = 'failed') = (reason is not null))
);
create index payout_reports_payout on payout_reports (payout_id);

-- Support's re-issues of failed payouts: one row per attempt after the first
-- (the first is the scheduler's decision, in payouts).
create table payout_reissues (
    payout_id    uuid not null,
    attempt      int not null check (attempt >= 2),
    payee        text not null,
    previous_payee text not null,
    failure_reason text,
    actor        text not null,
    at           timestamptz not null default now(),
    primary key (payout_id, attempt)
);
