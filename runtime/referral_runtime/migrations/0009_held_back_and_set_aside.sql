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

-- The relay claims only rows still to publish.
drop index outbox_unpublished;
create index outbox_unpublished on outbox (id) where published_at is null and set_aside_at is null;
create index outbox_set_aside on outbox (id) where set_aside_at is not null;
