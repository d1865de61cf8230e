-- Referral rewards: facts from billing, derived referral state, payouts, outbox.
-- Facts are append-only and keyed by billing's ids; derived rows are recomputed
-- from the facts, so the state is a function of the set of events (SPEC §3.3).

-- Idempotent consumer: one row per event id ever applied.
create table inbox (
    event_id     uuid primary key,
    event_type   text not null,
    topic        text not null,
    "partition"  int not null,
    "offset"     bigint not null,
    applied_at   timestamptz not null default now()
);

create table accounts (
    account_id     text primary key,
    first_seen_at  timestamptz not null default now(),
    is_partner     boolean not null default false,
    payee          text            -- who receives this referrer's cash; null = the account itself
);

-- Codes are stored normalised (8 Crockford symbols, no hyphen).
create table referral_codes (
    code        text primary key check (code ~ '^[0-9A-HJKMNP-TV-Z]{8}$'),
    account_id  text not null references accounts (account_id),
    status      text not null check (status in ('active', 'alias', 'revoked')),
    created_at  timestamptz not null default now(),
    retired_at  timestamptz
);
create unique index referral_codes_one_active on referral_codes (account_id) where status = 'active';

-- Facts. Personal data is reduced to what the rules compare: the email's
-- domain and a hash of the payment fingerprint.
create table subscriptions (
    subscription_id           text primary key,
    account_id                text not null,
    event_id                  uuid not null,
    created_at                timestamptz not null,     -- occurred_at of subscription.created
    plan_family               text not null,
    plan_id                   text not null,
    currency                  text not null,
    first_time_client         boolean not null,
    referral_code             text,                     -- normalised code as given
    code_outcome              text not null check (code_outcome in ('none', 'known', 'unknown', 'revoked')),
    referrer_account_id       text,                     -- owner of the code when it was used
    email_domain              text,
    organization_id           text,
    payment_fingerprint_hash  text
);
create index subscriptions_account on subscriptions (account_id);
create index subscriptions_referrer on subscriptions (referrer_account_id) where referrer_account_id is not null;

create table invoices (
    invoice_id         text primary key,
    account_id         text not null,
    subscription_id    text not null,
    event_id           uuid not null,
    paid_at            timestamptz not null,
    amount_paid_cents  bigint not null check (amount_paid_cents >= 0),
    discount_cents     bigint not null check (discount_cents >= 0),
    currency           text not null
);
create index invoices_account on invoices (account_id);

create table cancellations (
    event_id         uuid primary key,
    subscription_id  text not null,
    account_id       text not null,
    cancelled_at     timestamptz not null,   -- occurred_at
    effective_at     timestamptz not null,
    reason           text
);
create index cancellations_account on cancellations (account_id);

-- Derived: one referral per referred account (first touch), recomputed from facts.
create table referrals (
    referral_id               uuid primary key,     -- uuid5 of the referee account
    referee_account_id        text not null unique,
    referrer_account_id       text not null,
    referral_code             text not null,
    program                   text not null default 'cash' check (program in ('cash')),
    subscription_id           text not null,        -- the subscription that carried the code
    attributed_at             timestamptz not null,
    status                    text not null check (status in ('pending', 'qualified', 'ineligible')),
    reason                    text,
    first_payment_at          timestamptz,
    first_payment_invoice_id  text,
    currency                  text not null,
    payee                     text,                 -- support override for this referral
    updated_at                timestamptz not null default now()
);
create index referrals_referrer on referrals (referrer_account_id);
create index referrals_first_payment on referrals (first_payment_at) where status = 'qualified';

-- One decision per referral, ever.
create table payouts (
    referral_id          uuid primary key references referrals (referral_id),
    payout_id            uuid not null unique,
    outcome              text not null check (outcome in ('due', 'forfeited', 'ineligible')),
    reason               text,
    referrer_account_id  text not null,
    referee_account_id   text not null,
    payee                text,
    plan_family          text,
    amount_cents         bigint not null check (amount_cents >= 0),
    currency             text not null,
    first_payment_at     timestamptz,
    eligible_on          date,
    pay_by               date,
    as_of                date not null,
    decided_at           timestamptz not null default now()
);
create index payouts_pay_by on payouts (pay_by) where outcome = 'due';

-- Legacy program: monthly account credit per paid referee invoice.
create table legacy_referrals (
    referee_account_id    text primary key,
    referrer_account_id   text not null,
    monthly_credit_cents  bigint not null check (monthly_credit_cents > 0),
    currency              text not null,
    imported_at           timestamptz not null default now(),
    imported_by           text not null
);

create table legacy_credits (
    invoice_id           text primary key,
    referee_account_id   text not null,
    referrer_account_id  text not null,
    amount_cents         bigint not null,
    currency             text not null,
    created_at           timestamptz not null default now()
);

-- Every dead-lettered message, once per source coordinate.
create table dead_letters (
    topic        text not null,
    "partition"  int not null,
    "offset"     bigint not null,
    reason       text not null,
    detail       text not null,
    created_at   timestamptz not null default now(),
    primary key (topic, "partition", "offset")
);

-- Transactional outbox: written with the effects, published by the relay.
create table outbox (
    id            bigint generated always as identity primary key,
    topic         text not null,
    key           bytea,
    payload       bytea not null,
    headers       jsonb not null default '{}'::jsonb,
    created_at    timestamptz not null default now(),
    published_at  timestamptz
);
create index outbox_unpublished on outbox (id) where published_at is null;

-- Support operations: who did what, when.
create table audit_log (
    id       bigint generated always as identity primary key,
    actor    text not null,
    action   text not null,
    subject  text not null,
    details  jsonb not null default '{}'::jsonb,
    at       timestamptz not null default now()
);

-- Scheduler passes, for catch-up and the "last successful pass" metric.
create table scheduler_passes (
    as_of        date primary key,
    finished_at  timestamptz not null default now(),
    decided      int not null
);
