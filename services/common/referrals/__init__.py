"""Shared platform of the referral services: settings, logging, database, outbox, embedded stack, CLI."""
