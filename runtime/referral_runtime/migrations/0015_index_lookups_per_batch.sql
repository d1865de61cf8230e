-- A batch's cost follows the batch, not the tables.
--
-- Joined to unnest(ids), a lookup by a non-unique key (subscriptions by account or by
-- referrer) is planned from the column's statistics. Where they are missing or stale
-- (a table new or grown fast since the last ANALYZE, a restored database), the planner
-- takes each id to match 1/200 of the table and hashes all of it: a 20-event batch
-- then scans every subscription, and costs more as the table grows. A lateral subquery
-- with OFFSET 0 is not flattened into the join, so it runs once per id and goes by the
-- index whatever the statistics say. The same locks in the same order as migration 0014;
-- only the referrers read changes.
create or replace function lock_accounts_for_writing(
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
        from unnest(written) as w(account_id)
        cross join lateral (
            select s.referrer_account_id from subscriptions s
            where s.account_id = w.account_id and s.referrer_account_id is not null
            offset 0
        ) s
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
