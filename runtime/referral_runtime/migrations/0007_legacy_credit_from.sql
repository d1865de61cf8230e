-- Legacy program: the credit start (`referrals legacy import --credit-from`) is stored with
-- each imported referral, and only referee invoices paid on or after it earn a credit,
-- however late the consumer applies them (before: the consumer credited any invoice it
-- applied after the import, an old one consumed late included).
alter table legacy_referrals add column credit_from timestamptz;

-- Rows imported before: the import's own credit start, read from its audit record (written
-- in the same transaction, so at the same now() as imported_at). An import recorded without
-- one credited every invoice, from the beginning. A row with no audit record at all starts
-- at its import: the old system credited what was paid before it.
update legacy_referrals l
set credit_from = coalesce(
    (select case when a.details ? 'credit_from' and a.details->>'credit_from' is not null
                 then (a.details->>'credit_from')::timestamptz
                 else '-infinity'::timestamptz end
     from audit_log a
     where a.action = 'legacy.import' and a.at = l.imported_at
     order by a.id
     limit 1),
    l.imported_at);

alter table legacy_referrals alter column credit_from set not null;
