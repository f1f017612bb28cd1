"""Fuzzing parse_request: any input gives a Command or InvalidArgument, nothing else."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vnetd.contract.commands import OPS, Command, parse_request
from vnetd.contract.errors import InvalidArgument

FIELD_NAMES = ["name", "bridge", "mtu", "mac", "up", "stp", "forward_delay", "ageing_time",
               "vlan_filtering", "owner_uid", "group_gid", "multi_queue", "vnet_hdr", "ipv6",
               "kind", "owned_only", "commands", "stop_on_error", "op", "args"]

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=20,
)
# Values shaped like what each field wants, so fuzzing gets past the first check.
plausible = (
    st.sampled_from(["br0", "tap0", "vnet0", ".", "a" * 15, "a" * 16, "é", "eth0",
                     "52:54:00:12:34:56", "01:00:5e:00:00:01", "bridge", "tap"])
    | st.integers(min_value=-2, max_value=70_000)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
    | st.none()
)
sub_command = st.fixed_dictionaries(
    {"op": st.sampled_from(sorted(OPS))},
    optional={"args": st.dictionaries(st.sampled_from(FIELD_NAMES), plausible, max_size=5)},
)
args = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=6),
    plausible | json_like | st.lists(sub_command | json_like, max_size=3),
    max_size=6,
)
requests = st.fixed_dictionaries({"op": st.sampled_from(sorted(OPS))}, optional={"args": args})

FUZZ = settings(max_examples=200, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


def outcome_of(body: Any) -> Command | InvalidArgument:
    try:
        return parse_request(body)
    except InvalidArgument as exc:
        refusal = exc
    assert refusal.message, "a refusal must say why"
    return refusal


@FUZZ
@given(json_like)
def test_arbitrary_json_never_escapes_as_another_exception(body: Any) -> None:
    result = outcome_of(body)
    assert isinstance(result, Command | InvalidArgument)


@FUZZ
@given(requests)
def test_known_ops_with_random_args(body: dict[str, Any]) -> None:
    result = outcome_of(body)
    if isinstance(result, Command):
        assert result.op == body["op"]
        assert type(result) is OPS[body["op"]]
    else:
        assert isinstance(result, InvalidArgument)
        assert result.message.startswith(body["op"])


@FUZZ
@given(st.lists(sub_command, min_size=1, max_size=4), st.booleans())
def test_random_batches(commands: list[dict[str, Any]], stop: bool) -> None:
    result = outcome_of({"op": "batch", "args": {"commands": commands, "stop_on_error": stop}})
    if isinstance(result, Command):
        assert len(result.commands) == len(commands)  # type: ignore[attr-defined]
        assert all(c.op != "batch" for c in result.commands)  # type: ignore[attr-defined]
    else:
        assert result.message.startswith("batch: commands")
