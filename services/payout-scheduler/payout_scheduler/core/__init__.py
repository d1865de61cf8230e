"""Pure payout rules: business days, due dates and payout decisions; no I/O, no clock reads."""
