-- Payout scheduler: one index fewer to write per decision.
--
-- payouts_pay_by served no query: the due-soon gauge reads the unpublished
-- outbox, support lists by referrer, and the demo's summary reads the whole
-- table. Every due decision still paid for an entry in it, on the one leaf page
-- where all of a day's equal pay_by keys go, which the pass's concurrent
-- chunks contended for.
drop index payouts_pay_by;
