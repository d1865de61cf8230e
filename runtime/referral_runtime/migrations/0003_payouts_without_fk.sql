-- Payout scheduler: a decision pass writes 10^5 payouts rows at once.
--
-- The foreign key to referrals ran one lookup per inserted row (a quarter of
-- the insert's cost). It guarded nothing the insert does not already: the only
-- writer (payout_scheduler.store._RECORD_DECISIONS) selects each row from the
-- referral it joins, which the same transaction holds locked FOR UPDATE, and
-- referrals are never deleted.
alter table payouts drop constraint payouts_referral_id_fkey;
