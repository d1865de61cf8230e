-- Decisions only on complete facts, and an outbox that one message cannot block.

-- Since when decision passes have been held back (they waited for the consumer group
-- to apply every billing event published when they began, and it did not in time).
-- One row while passes are held back, none otherwise; kept in the database so that
-- the metric, and its alert, survive scheduler restarts.
create table scheduler_held_back (
    only_row    boolean primary key default true check (only_row),
    since       timestamptz not null,
    checked_at  timestamptz not null,
    unapplied   bigint not null     -- billing messages not yet applied at the last check
);

-- An outbox row the broker or the producer refuses for good (too large, say) is set
-- aside with the reason, never deleted, and the relay carries on with the rows behind it.
alter table outbox add column set_aside_at timestamptz;
alter table outbox add column set_aside_reason text;
alter table outbox add constraint outbox_set_aside_has_a_reason
    check ((set_aside_at is null) = (set_aside_reason is null));
-- Support handled a row set aside and it is not to be published (`referrals outbox
-- dismiss`, audited): it stays, set aside, and no longer counts as waiting for a person.
alter table outbox add column dismissed_at timestamptz;
alter table outbox add constraint outbox_dismissed_only_when_set_aside
    check (dismissed_at is null or set_aside_at is not null);

-- The relay still claims through outbox_unpublished (published_at is null), skipping
-- the few rows set aside; that index stays as it is, so the previous release's relay,
-- during a rollout or after a roll back, finds its rows as fast as before.
create index outbox_set_aside on outbox (topic)
    where set_aside_at is not null and dismissed_at is null;
