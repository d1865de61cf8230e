-- Which version of the program's rules (referral_program.table.RULES_VERSION) the
-- referral rows were last recomputed under. `referrals migrate` recomputes every
-- undecided referral when the release's version is newer than the latest row here,
-- then records it. No row: referrals computed before versions were recorded (before
-- the partner flag counted from the instant support set it, for one), so the first
-- `referrals migrate` with this table recomputes them.
create table rules_installed (
    version              int primary key,
    installed_at         timestamptz not null default now(),
    referrals_examined   int not null,   -- undecided referees recomputed
    referrals_changed    int not null    -- of which the referral row changed
);
