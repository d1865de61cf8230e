-- Partner flags count from the instant support set them (SPEC §3.6).
--
-- accounts.partner_periods holds every period the flag was set, [since, until).
-- The trigger keeps it in step with is_partner, at the transaction's now(): the
-- same instant as the audit_log row that support's operation writes with it.
-- It sits on accounts (which the scheduler already joins) rather than in a table
-- of its own, so a decision costs no extra lookup.
alter table accounts add column partner_periods tstzmultirange not null default '{}';

-- Existing flags, from the audit log (set_partner records only real flips); a flag
-- set with no record counts since ever.
with flips as (
    select subject as account_id, action, at,
           lead(at) over (partition by subject order by at, id) as next_at
    from audit_log
    where action in ('partner.set', 'partner.unset')
),
periods as (
    select account_id, range_agg(tstzrange(at, next_at)) as periods
    from flips where action = 'partner.set' group by account_id
)
update accounts a set partner_periods = p.periods
from periods p where p.account_id = a.account_id;
update accounts
set partner_periods = partner_periods + tstzmultirange(tstzrange(upper(partner_periods), null))
where is_partner and partner_periods <> '{}' and not upper_inf(partner_periods);
update accounts set partner_periods = '{(,)}' where is_partner and partner_periods = '{}';
update accounts set partner_periods = partner_periods - tstzmultirange(tstzrange(now(), null))
where not is_partner and upper_inf(partner_periods);

create function accounts_partner_periods() returns trigger language plpgsql as $$
begin
    if new.is_partner and (tg_op = 'INSERT' or not old.is_partner) then
        new.partner_periods := new.partner_periods + tstzmultirange(tstzrange(now(), null));
    elsif not new.is_partner and tg_op = 'UPDATE' and old.is_partner then
        new.partner_periods := new.partner_periods - tstzmultirange(tstzrange(now(), null));
    end if;
    return new;
end $$;

create trigger accounts_partner_periods before insert or update of is_partner on accounts
    for each row execute function accounts_partner_periods();

alter table accounts add constraint accounts_partner_periods_follow_the_flag
    check (is_partner = upper_inf(partner_periods));
