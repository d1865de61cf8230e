"""The referral consumer: billing events -> referral state, exactly once."""
