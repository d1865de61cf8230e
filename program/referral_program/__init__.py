"""The referral program's rules: codes, attribution, eligibility, decisions, calendar; pure (standard library + holidays), no I/O, no clock reads."""
