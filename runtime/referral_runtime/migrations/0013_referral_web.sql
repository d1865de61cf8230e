-- referral-web: the friend's landing visits, and the role the service works as.
--
-- Landing visits are counted per code and day, and nothing else: no address,
-- no browser, no time of day. referral-web adds the counts it has buffered in
-- memory with one upsert every VISIT_FLUSH_SECONDS, so a row is written a few
-- times a minute at most, whatever the traffic.
create table code_visits (
    code    text not null,
    day     date not null,               -- program time zone
    visits  bigint not null check (visits > 0),
    primary key (code, day)
);

-- The role referral-web switches to (SET ROLE) on every connection. It reads what
-- the pages and the read API show, with the personal columns of subscriptions
-- (email domain, organization, payment fingerprint hash) left out, and may add
-- to code_visits; nothing else. Roles belong to the whole server, so an
-- existing one is kept (another database of the same server, or created by a
-- DBA beforehand); the migrating login is made a member so that it, and a
-- login made for the service the same way, can switch to it.
do $$
begin
    if not exists (select from pg_roles where rolname = 'referral_web') then
        begin
            create role referral_web nologin;
        exception when duplicate_object or unique_violation then
            null;  -- another database of the server created it at the same moment
        end;
    end if;
    if not pg_has_role(current_user, 'referral_web', 'MEMBER') then
        execute format('grant referral_web to %I', current_user);
    end if;
    execute format('grant usage on schema %I to referral_web', current_schema());
end $$;

grant select on referral_codes, referrals, payouts, accounts, legacy_referrals, legacy_credits,
    code_visits to referral_web;
grant select (subscription_id, account_id, plan_family, created_at) on subscriptions
    to referral_web;
grant select (subscription_id, account_id, effective_at) on cancellations to referral_web;
grant insert, update on code_visits to referral_web;
