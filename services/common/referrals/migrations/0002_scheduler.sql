-- Payout scheduler: the lookups of a decision pass.

-- A pass reads every cancellation of the referees' subscriptions, joined by
-- subscription (billing's key), not by the account the event named.
create index cancellations_subscription on cancellations (subscription_id);
