"""Payout scheduler: decides due referral cash payouts and publishes them through an outbox."""
