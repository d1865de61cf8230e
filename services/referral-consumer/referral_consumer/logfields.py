"""Where a record or a batch sits in Kafka, for log lines an SRE can follow to the message.

The functions are shared with the scheduler's subscriber and live in
:mod:`referral_runtime.records`.
"""

from referral_runtime.records import batch_fields, event_id_of, record_fields

__all__ = ["batch_fields", "event_id_of", "record_fields"]
