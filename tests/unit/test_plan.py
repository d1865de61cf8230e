"""A batch's plan: a pure function of its parsed events, built before the transaction."""

from __future__ import annotations

from referral_consumer.plan import CODE, MALFORMED_CODE, NO_CODE, BatchPlan
from referral_devtools import synthetic as bill
from tests.unit.records import T, parsed


def test_each_event_id_is_planned_once_and_later_copies_are_repeats() -> None:
    created = bill.subscription_created("a", "s1", "chat", T)
    paid = bill.invoice_paid("a", "s1", "i1", 100, T)
    plan = BatchPlan.of(parsed(("created", created), ("paid", paid), ("created", created)))

    assert [str(p.event.event_id) for p in plan.events] == [
        created["event_id"],
        paid["event_id"],
    ]
    assert [p.record.offset for p in plan.repeats] == [2]
    assert plan.created.subscription_id == ["s1"]
    assert plan.invoice_columns[0] == ["i1"]
    assert plan.inbox_columns[4] == [0, 1]  # offsets of the first deliveries


def test_plans_built_slice_by_slice_equal_one_built_at_once() -> None:
    events = parsed(
        ("created", bill.subscription_created("a", "s1", "chat", T, code="abcd efgh")),
        ("paid", bill.invoice_paid("a", "s1", "i1", 100, T)),
        ("cancelled", bill.subscription_cancelled("a", "s1", T)),
        ("created", bill.subscription_created("b", "s2", "virtual_receptionist", T)),
    )
    sliced = BatchPlan()
    sliced.add(events[:1])
    sliced.add(events[1:3])
    sliced.add(events[3:])
    sliced.seal()
    whole = BatchPlan.of(events)

    assert sliced.inbox_columns == whole.inbox_columns
    assert sliced.created.arrays() == whole.created.arrays()
    assert sliced.invoice_columns == whole.invoice_columns
    assert sliced.cancellation_columns == whole.cancellation_columns
    assert sliced.accounts == whole.accounts == {"a", "b"}


def test_codes_are_normalised_and_classified_before_the_lookup() -> None:
    plan = BatchPlan.of(
        parsed(
            ("created", bill.subscription_created("a", "s1", "chat", T)),
            ("created", bill.subscription_created("b", "s2", "chat", T, code="  ")),
            ("created", bill.subscription_created("c", "s3", "chat", T, code="not a code!")),
            ("created", bill.subscription_created("d", "s4", "chat", T, code="abcd-efgh")),
            ("created", bill.subscription_created("e", "s5", "chat", T, code="oil1 uvwx")),
        )
    )
    assert plan.created.code_state == [NO_CODE, NO_CODE, MALFORMED_CODE, CODE, MALFORMED_CODE]
    assert plan.created.referral_code == [None, None, None, "ABCDEFGH", None]


def test_only_comparable_customer_facts_mark_a_subscription_as_changing_referees() -> None:
    plan = BatchPlan.of(
        parsed(
            ("created", bill.subscription_created("a", "s1", "chat", T, email="x@gmail.com")),
            ("created", bill.subscription_created("b", "s2", "chat", T, email="x@acme.test")),
            ("created", bill.subscription_created("c", "s3", "chat", T, organization_id="o")),
            ("created", bill.subscription_created("d", "s4", "chat", T, payment_fingerprint="f")),
            ("created", bill.subscription_created("e", "s5", "chat", T)),
        )
    )
    assert plan.created.compared == [False, True, True, True, False]
    # the address itself never reaches a column, nor the raw fingerprint
    assert plan.created.email_domain == ["gmail.com", "acme.test", None, None, None]
    assert "f" not in plan.created.payment_fingerprint_hash


def test_column_arrays_line_up_with_their_events() -> None:
    plan = BatchPlan.of(
        parsed(
            ("paid", bill.invoice_paid("a", "s1", "i1", 100, T)),
            ("paid", bill.invoice_paid("b", "s2", "i2", 0, T)),
            ("cancelled", bill.subscription_cancelled("a", "s1", T)),
        )
    )
    invoice_id, account, _, event_id, paid_at, amount, discount, currency = plan.invoice_columns
    assert (invoice_id, account, paid_at) == (["i1", "i2"], ["a", "b"], [T, T])
    assert (amount, discount, currency) == ([100, 0], [0, 0], ["USD", "USD"])
    assert event_id == [e.event_id for e in plan.paid]
    cancelled = plan.cancellation_columns
    assert cancelled[1:3] == (["s1"], ["a"])
    assert cancelled[4] == [T]  # effective_at defaults to occurred_at


def test_a_subscription_created_twice_in_a_batch_is_inserted_once_the_first_kept() -> None:
    first = bill.subscription_created("a", "s1", "chat", T)
    again = bill.subscription_created("a", "s1", "virtual_receptionist", T)  # another event id
    plan = BatchPlan.of(parsed(("created", first), ("created", again), ("created", first)))

    assert [str(e) for e in plan.created.event_id] == [first["event_id"]]
    assert plan.created.plan_family == ["chat"]
    assert [str(e) for e in plan.recreated.event_id] == [again["event_id"]]
    assert plan.recreated.plan_family == ["virtual_receptionist"]
    assert [p.record.offset for p in plan.repeats] == [2]  # the same event again: a repeat
    assert [len(c) for c in plan.recreated.rows([0])] == [1] * len(plan.created.arrays())
