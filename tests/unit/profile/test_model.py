"""profile/schema.py: the schema's field validators (ports, CIDRs, host lists)."""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from netfence.errors import ProfileError
from netfence.policy import compile_policy
from netfence.profile import HostPattern
from netfence.profile.loader import parse_profile, with_overrides
from netfence.profile.model import InboundNetwork, Network, OutboundNetwork, Profile
from netfence.profile.schema import InboundSchema, NetworkSchema, OutboundSchema, ProfileSchema


@given(st.integers(1, 65535))
def test_generated_valid_ports(port: int) -> None:
    profile = parse_profile({"network": {"outbound": {"allow_port": [port]}}}, "gen.json")
    assert profile.network.outbound.allow_port == (port,)
    assert compile_policy(profile).ports == (port,)


@given(st.one_of(st.integers(max_value=0), st.integers(min_value=65536)))
def test_generated_out_of_range_ports(port: int) -> None:
    with pytest.raises(ProfileError) as info:
        parse_profile({"network": {"outbound": {"allow_port": [443, port]}}}, "gen.json")
    message = str(info.value)
    assert message.startswith("gen.json: network.outbound.allow_port = ")
    assert f"entry 1 {port}:" in message


@given(st.integers(1, 65535).map(str))
def test_generated_port_strings_are_rejected(port: str) -> None:
    with pytest.raises(ProfileError, match="1 to 65535"):
        parse_profile({"network": {"outbound": {"allow_port": [port]}}}, "gen.json")


@given(st.ip_addresses().flatmap(
    lambda ip: st.tuples(st.just(ip), st.integers(0, ip.max_prefixlen))))
def test_generated_cidrs(ip_and_len: tuple[Any, int]) -> None:
    ip, prefixlen = ip_and_len
    text = f"{ip}/{prefixlen}"
    profile = parse_profile({"network": {"outbound": {"allow_cidr": [text]}}}, "gen.json")
    assert profile.network.outbound.allow_cidr == (ipaddress.ip_network(text, strict=False),)


@pytest.mark.parametrize("model", [OutboundSchema, InboundSchema])
def test_allow_host_is_one_type_in_both_directions(model: type[OutboundSchema]) -> None:
    parsed = model.model_validate({"allow_host": ["A.test", "a.test.", "*.b.test"]})
    assert parsed.allow_host == (HostPattern("a.test"), HostPattern("b.test", subdomains=True))
    assert model.model_validate({"allow_host": None}).allow_host == ()
    with pytest.raises(ValidationError, match="must be a list of host names"):
        model.model_validate({"allow_host": "a.test"})
    with pytest.raises(ValidationError, match="entry 1 must be a string"):
        model.model_validate({"allow_host": ["a.test", 5]})


def test_a_long_allowlist_is_deduplicated_without_comparing_every_pair(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Speed belongs to the benchmarks; this counts comparisons: a list check made
    # 10,000 hosts take 11 s (n^2/2 comparisons), a hash check compares only on a match.
    compared = 0
    equal = HostPattern.__eq__

    def counting(self: HostPattern, other: object) -> bool:
        nonlocal compared
        compared += 1
        return equal(self, other)

    monkeypatch.setattr(HostPattern, "__eq__", counting)
    hosts = [f"h{i}.example.test" for i in range(2000)] + ["h7.example.test"]
    profile = parse_profile({"network": {"outbound": {"allow_host": hosts}}}, "test")
    assert len(profile.network.outbound.allow_host) == 2000
    more = with_overrides(profile, allow_host=["h8.example.test", "new.example.test"])
    assert len(more.network.outbound.allow_host) == 2001
    assert compared < 100


# --- the schema (pydantic) and the values the rest of netfence reads (no pydantic) -----

PAIRS = [(ProfileSchema, Profile), (NetworkSchema, Network), (OutboundSchema, OutboundNetwork),
         (InboundSchema, InboundNetwork)]


@pytest.mark.parametrize(("schema", "value"), PAIRS)
def test_every_validated_field_reaches_the_value(schema: Any, value: Any) -> None:
    # A field the schema validates but value() drops would be ignored by the policy:
    # a rule written in the profile, silently not enforced.
    assert list(schema.model_fields) == [f.name for f in dataclasses.fields(value)]
    assert schema.model_construct().value() == value()  # the same defaults


def test_a_full_profile_keeps_every_value_through_the_schema() -> None:
    data = {
        "name": "full", "read": ["/data"], "write": ["/tmp/out"],
        "allow_unix_socket": ["/run/x.sock"], "privileged": False,
        "network": {"mode": "none", "outbound": {
            "insecure_allow_all": True, "allow_host": ["a.test", "*.b.test"],
            "allow_port": [8443], "allow_cidr": ["10.1.0.0/16"]},
            "inbound": {"allow_host": ["c.test"]}}}
    checked = ProfileSchema.model_validate(data)
    profile = parse_profile(data, "full.json")
    assert isinstance(profile, Profile) and not isinstance(profile, ProfileSchema)
    assert dataclasses.asdict(profile) == checked.model_dump()


def test_a_run_with_a_builtin_profile_imports_no_pydantic() -> None:
    # A fresh interpreter: what `netfence run -- CMD` does with the default profile, up to
    # the proxy's config. Importing pydantic costs about 60 ms of every start.
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import netfence.cli.main\n"
        "from netfence.backends import Endpoint, Placement, get_backend\n"
        "from netfence.backends.dnsmasq import dns_setup\n"
        "from netfence.policy import compile_policy\n"
        "from netfence.profile.loader import load_profile, with_overrides\n"
        "import netfence.runtimes.namespace.runtime\n"
        "for ref in ('none', 'network'):\n"
        "    profile = with_overrides(load_profile(ref), read=[], write=[])\n"
        "    policy = compile_policy(profile)\n"
        "    placement = Placement(state_dir=Path('/nonexistent'),\n"
        "        egress_listen=Endpoint('127.0.0.1', 3128), workload_proxy='127.0.0.1:3128',\n"
        "        dns_listen=Endpoint('127.0.0.1', 53),\n"
        "        upstream_resolver=Endpoint('127.0.0.1', 53))\n"
        "    get_backend('envoy').setup(policy, placement)\n"
        "    dns_setup(policy, placement)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pydantic'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "[]", done.stdout
