"""Bad input of every kind: a typed error, and Redis and Postgres exactly as before."""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from quota import Gate, InvalidInput, QuotaError, UnknownReservation
from quota.validation import MAX_CAP_TOKENS
from tests.conftest import pg_counts, snapshot, watched

bad_ids = st.one_of(
    st.just(""),
    st.text(min_size=129, max_size=140, alphabet="abc"),
    st.text(min_size=1, max_size=20).filter(
        lambda s: any(c not in string.ascii_letters + string.digits + "._:@/-" for c in s)
    ),
    st.integers(),
    st.none(),
    st.binary(max_size=5),
    st.floats(),
)
bad_tokens = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=10**12 + 1),
    st.booleans(),
    st.floats(),
    st.just(math.nan),
    st.just(math.inf),
    st.text(max_size=5),
    st.none(),
    st.decimals(allow_nan=True),
)
# Caps may be far larger than one call's tokens; only beyond MAX_CAP_TOKENS are they bad.
bad_caps = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=MAX_CAP_TOKENS + 1),
    st.booleans(),
    st.floats(),
    st.text(max_size=5),
    st.decimals(allow_nan=True),
)
good: dict[str, Any] = {
    "port_id": "p",
    "feature": "ocr",
    "provider": "openai",
    "model": "gpt-4o",
    "input_tokens": 1,
    "output_tokens": 1,
}


def _call(gate: Gate, rid: str, op: str, field: str, value: Any) -> None:
    if op == "record":
        record_args: dict[str, Any] = {**good, field: value}
        gate.record(**record_args)
    elif op == "check":
        args = {"port_id": "p", "estimated_tokens": 1, field: value}
        gate.check(args["port_id"], args["estimated_tokens"])
    elif op == "reserve":
        args = {"port_id": "p", "estimated_tokens": 1, "feature": "ocr", field: value}
        gate.reserve(args["port_id"], args["estimated_tokens"], args["feature"])
    elif op == "commit":
        args = {"input_tokens": 1, "output_tokens": 1, "provider": "a", "model": "b", field: value}
        gate.commit(rid, **args)
    elif op == "set_budget":
        gate.set_budget("p", updated_by="u", **{field: value})


calls = st.one_of(
    st.tuples(
        st.just("record"), st.sampled_from(["port_id", "feature", "provider", "model"]), bad_ids
    ),
    st.tuples(st.just("record"), st.sampled_from(["input_tokens", "output_tokens"]), bad_tokens),
    st.tuples(
        st.just("record"),
        st.sampled_from(["user_id", "request_id"]),
        bad_ids.filter(lambda x: x is not None),
    ),
    st.tuples(st.just("check"), st.just("port_id"), bad_ids),
    st.tuples(st.just("check"), st.just("estimated_tokens"), bad_tokens),
    st.tuples(st.just("reserve"), st.sampled_from(["port_id", "feature"]), bad_ids),
    st.tuples(st.just("reserve"), st.just("estimated_tokens"), bad_tokens),
    st.tuples(st.just("commit"), st.sampled_from(["input_tokens", "output_tokens"]), bad_tokens),
    st.tuples(st.just("commit"), st.sampled_from(["provider", "model"]), bad_ids),
    st.tuples(
        st.just("set_budget"),
        st.sampled_from(["soft_cap_tokens", "hard_cap_tokens"]),
        bad_caps,
    ),
    st.tuples(
        st.just("set_budget"),
        st.just("period"),
        st.one_of(st.text(max_size=8), st.integers()).filter(
            lambda x: x not in ("day", "week", "month")
        ),
    ),
    st.tuples(
        st.just("set_budget"), st.just("enabled"), st.one_of(st.integers(), st.text(max_size=3))
    ),
)


@pytest.fixture
def primed(gate: Gate, r: redis.Redis) -> tuple[Gate, str]:
    """A port with a budget, some usage and an open reservation: state to leave untouched.
    (And the gate's epoch key, which its watch thread writes about a second after it
    starts: not during an example.)"""
    watched(gate, r)
    gate.set_budget("p", enabled=True, soft_cap_tokens=10, hard_cap_tokens=100, updated_by="u")
    gate.record(**good)
    d = gate.reserve("p", 5, "ocr")
    assert d.reservation_id
    return gate, d.reservation_id


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(call=calls)
def test_bad_input_raises_a_typed_error_and_writes_nothing(
    primed: tuple[Gate, str], r: redis.Redis, pg: Engine, call: tuple[str, str, Any]
) -> None:
    gate, rid = primed
    before = snapshot(r, gate.settings.key_prefix), pg_counts(pg)
    with pytest.raises(QuotaError) as err:
        _call(gate, rid, *call)
    assert isinstance(err.value, InvalidInput | UnknownReservation)
    assert (snapshot(r, gate.settings.key_prefix), pg_counts(pg)) == before
