-- Payout scheduler: the lookups of a decision pass.

-- A pass reads every cancellation of the referees' subscriptions, joined by
-- subscription (billing's key), not by the account the event named.
create index cancellations_subscription on cancellations (subscription_id);

-- A pass starts from the referrals whose first payment is old enough, whatever
-- their status (0001's first-payment index covers qualified ones only).
create index referrals_first_payment_any on referrals (first_payment_at)
    where first_payment_at is not null;
