"""Runtime shared by the services and operations: settings, logging, database, migrations, outbox relay, retries."""
