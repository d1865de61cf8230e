"""`make bench`: the consumer and the scheduler measured against same-run ceilings."""
