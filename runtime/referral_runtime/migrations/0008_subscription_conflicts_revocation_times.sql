-- Consumer: a subscription is created once. A second subscription.created for a subscription
-- already recorded, under another event id, is a duplicate when it says the same (counted
-- only), and a conflict when it does not: the first stays, and the conflicting event is
-- recorded here, counted and logged, so that billing and support can settle which is right.
create table subscription_conflicts (
    event_id                  uuid primary key,       -- the conflicting event
    subscription_id           text not null,
    account_id                text not null,
    created_at                timestamptz not null,   -- its occurred_at
    plan_family               text not null,
    plan_id                   text not null,
    currency                  text not null,
    first_time_client         boolean not null,
    referral_code             text,                   -- normal form; null: none, or malformed
    code_state                text not null check (code_state in ('none', 'malformed', 'code')),
    email_domain              text,
    organization_id           text,
    payment_fingerprint_hash  text,
    differs                   text[] not null,        -- the event's fields that differ from the kept one
    topic                     text not null,
    "partition"               int not null,
    "offset"                  bigint not null,
    recorded_at               timestamptz not null default now()
);
create index subscription_conflicts_subscription on subscription_conflicts (subscription_id);

-- A revocation counts from the instant support revoked the code (its retired_at), in
-- business time. Sign-ups recorded before were resolved against the code's status when
-- they arrived: re-resolve them. One made before the revocation but recorded after it
-- attributes; one made at or after it but recorded before it does not. The referrals of
-- these referees change with them when undecided referrals are next recomputed from their
-- facts under the rules installed (a rule changed here).
update subscriptions s
set code_outcome = 'known', referrer_account_id = c.account_id
from referral_codes c
where s.referral_code = c.code and s.code_outcome = 'revoked'
  and c.status = 'revoked' and s.created_at < c.retired_at;

update subscriptions s
set code_outcome = 'revoked', referrer_account_id = null
from referral_codes c
where s.referral_code = c.code and s.code_outcome = 'known'
  and c.status = 'revoked' and s.created_at >= c.retired_at;
