"""Operations: support commands, the read model and read API, the `referrals` CLI."""
