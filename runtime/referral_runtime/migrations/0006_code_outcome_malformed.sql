-- Consumer: a sign-up whose referral_code cannot be a code is applied, its code
-- recorded as 'malformed' (before: dead-lettered if longer than 64 characters,
-- else recorded as 'unknown'). Only the normal form of a code is ever stored,
-- so a malformed one leaves nothing of its text in the row.
alter table subscriptions drop constraint subscriptions_code_outcome_check;
alter table subscriptions add constraint subscriptions_code_outcome_check
    check (code_outcome in ('none', 'known', 'unknown', 'malformed', 'revoked'));
-- Rows written before: a code given but no normal form stored was a malformed one.
update subscriptions set code_outcome = 'malformed'
where code_outcome = 'unknown' and referral_code is null;
