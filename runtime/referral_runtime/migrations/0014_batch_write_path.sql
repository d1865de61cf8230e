-- The batch write path: fewer round trips and less work per event.
--
-- lock_accounts_for_writing: the locks a transaction takes before it writes the facts of some accounts, in one
-- round trip (the order and modes of referral_state's module docstring):
--   the legacy import's advisory lock, shared;
--   FOR UPDATE on the accounts a new compared fact was added to (changed);
--   FOR NO KEY UPDATE on the other written accounts;
--   then, with those held, the referrers of the written accounts and the owners of the
--   codes used, FOR KEY SHARE unless written.
-- Each mode in account_id order.
create function lock_accounts_for_writing(
    legacy_import_lock bigint, written text[], changed text[], codes_used text[]
) returns void
language plpgsql as $$
declare
    referrers text[];
begin
    perform pg_advisory_xact_lock_shared(legacy_import_lock);
    perform 1
    from unnest(changed) as w(account_id) join accounts a using (account_id)
    order by a.account_id
    for update of a;
    perform 1
    from (select unnest(written) except select unnest(changed)) as w(account_id)
    join accounts a using (account_id)
    order by a.account_id
    for no key update of a;
    select coalesce(array_agg(r.account_id), '{}') into referrers from (
        select s.referrer_account_id as account_id
        from unnest(written) as w(account_id) join subscriptions s using (account_id)
        where s.referrer_account_id is not null
        union
        select c.account_id
        from unnest(codes_used) as x(code) join referral_codes c using (code)
    ) r;
    perform 1
    from (select unnest(referrers) except select unnest(written)) as w(account_id)
    join accounts a using (account_id)
    order by a.account_id
    for key share of a;
end
$$;

-- No query looks cancellations up by account (readers go by subscription_id, which
-- cancellations_subscription serves): the index only cost every batch's insert.
drop index cancellations_account;

-- The partner-period trigger fired for every account a batch proposes (conflicting
-- ones included), though only an insert of a partner or a change of the flag does
-- anything: the same function, called only then.
drop trigger accounts_partner_periods on accounts;
create trigger accounts_partner_periods_on_insert before insert on accounts
    for each row when (new.is_partner)
    execute function accounts_partner_periods();
create trigger accounts_partner_periods_on_flag before update of is_partner on accounts
    for each row when (old.is_partner is distinct from new.is_partner)
    execute function accounts_partner_periods();
