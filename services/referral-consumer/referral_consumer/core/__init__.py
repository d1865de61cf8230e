"""Pure rules of the referral program: no I/O, no clock reads, no randomness of their own."""
