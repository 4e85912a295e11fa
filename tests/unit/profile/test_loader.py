"""profile/loader.py: profiles from files (JSON, YAML) and built-ins, validation errors
naming file, field and value, and command-line overrides."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from netfence.errors import ProfileError, UsageError
from netfence.policy import compile_policy
from netfence.profile import BUILTIN_PROFILES, HostPattern, Profile, load_profile, with_overrides
from netfence.profile.loader import parse_profile
from netfence.profile.model import DEFAULT_PORTS

FULL: dict[str, Any] = {
    "name": "fetch",
    "read": ["/data", "/etc/ssl"],
    "write": ["/tmp/out"],
    "privileged": False,
    "network": {
        "mode": "bridge",
        "outbound": {
            "insecure_allow_all": False,
            "allow_host": [
                ".github.com",
                "api.example.com",
                "*.Example.ORG.",
                "10.0.0.5",
                "bücher.example",
                "api.example.com",  # duplicates collapse
            ],
            "allow_port": [443, 8443, 443],
            "allow_cidr": ["10.20.0.0/16", "fd00::/8", "192.168.1.7/24"],
        },
        "inbound": {"allow_host": ["localhost", "*.internal.example"]},
    },
}


def write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / name
    if name.endswith(".json"):
        path.write_text(json.dumps(data), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def load_data(tmp_path: Path, name: str, data: object) -> Profile:
    return load_profile(str(write(tmp_path, name, data)))


def assert_full(profile: Profile) -> None:
    assert profile.name == "fetch"
    assert profile.read == ("/data", "/etc/ssl")
    assert profile.write == ("/tmp/out",)
    assert profile.privileged is False
    assert profile.network.mode == "bridge"
    out = profile.network.outbound
    assert out.insecure_allow_all is False
    assert out.allow_host == (
        HostPattern("github.com", subdomains=True),
        HostPattern("api.example.com"),
        HostPattern("example.org", subdomains=True),
        HostPattern("10.0.0.5", is_ip=True),
        HostPattern("xn--bcher-kva.example"),
    )
    assert out.allow_port == (443, 8443)
    assert out.allow_cidr == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00::/8"),
        ipaddress.ip_network("192.168.1.0/24"),
    )
    assert profile.network.inbound.allow_host == (
        HostPattern("localhost"),
        HostPattern("internal.example", subdomains=True),
    )


# --- loading files ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["p.json", "p.yaml", "p.yml", "profile"])
def test_full_profile_from_file(tmp_path: Path, name: str) -> None:
    assert_full(load_data(tmp_path, name, FULL))


def test_handwritten_yaml(tmp_path: Path) -> None:
    path = tmp_path / "fetch.yaml"
    path.write_text(
        """\
name: fetch
read: [/data, /etc/ssl]
write:
  - /tmp/out
privileged: false
network:
  mode: bridge
  outbound:
    insecure_allow_all: false
    allow_host:
      - .github.com
      - api.example.com
      - "*.Example.ORG."
      - 10.0.0.5
      - bücher.example
    allow_port: [443, 8443]
    allow_cidr: [10.20.0.0/16, "fd00::/8", 192.168.1.7/24]
  inbound:
    allow_host: [localhost, "*.internal.example"]
""",
        encoding="utf-8",
    )
    assert_full(load_profile(str(path)))


def test_json_content_in_a_yaml_file(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(json.dumps(FULL), encoding="utf-8")
    assert_full(load_profile(str(path)))


@pytest.mark.parametrize("name", ["p.json", "p.yaml"])
def test_empty_mapping_means_defaults(tmp_path: Path, name: str) -> None:
    profile = load_data(tmp_path, name, {})
    assert profile == Profile()
    assert profile.privileged is False
    assert profile.network.mode == "bridge"
    out = profile.network.outbound
    assert (out.insecure_allow_all, out.allow_host, out.allow_port, out.allow_cidr) == (
        False, (), None, ()
    )
    assert compile_policy(profile).ports == DEFAULT_PORTS == (80, 443)
    assert compile_policy(profile).denies_everything


@pytest.mark.parametrize("name", ["p.json", "p.yaml"])
def test_nulls_mean_empty(tmp_path: Path, name: str) -> None:
    data = {"network": {"outbound": {"allow_host": None, "allow_port": None, "allow_cidr": None},
                        "inbound": {"allow_host": None}}}
    profile = load_data(tmp_path, name, data)
    assert profile.network.outbound.allow_host == ()
    assert profile.network.outbound.allow_port is None
    assert profile.network.outbound.allow_cidr == ()
    assert profile.network.inbound.allow_host == ()


def test_mode_none_is_accepted(tmp_path: Path) -> None:
    profile = load_data(tmp_path, "p.json", {"network": {"mode": "none"}})
    assert profile.network.mode == "none"


def test_absent_ports_default_to_80_and_443_and_empty_list_means_none(tmp_path: Path) -> None:
    absent = load_data(tmp_path, "a.json", {"network": {"outbound": {"allow_host": ["a.com"]}}})
    empty = load_data(tmp_path, "b.json",
                      {"network": {"outbound": {"allow_host": ["a.com"], "allow_port": []}}})
    assert absent.network.outbound.allow_port is None
    assert compile_policy(absent).ports == (80, 443)
    assert empty.network.outbound.allow_port == ()
    assert compile_policy(empty).ports == ()


def test_loaded_profile_is_frozen(tmp_path: Path) -> None:
    profile = load_data(tmp_path, "p.json", FULL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile.network.outbound.insecure_allow_all = True  # type: ignore[misc]


# --- built-ins -------------------------------------------------------------------------


def test_builtin_none_allows_no_egress() -> None:
    profile = load_profile("none")
    assert profile is BUILTIN_PROFILES["none"]
    out = profile.network.outbound
    assert not out.insecure_allow_all
    assert out.allow_host == ()
    policy = compile_policy(profile)
    assert policy.denies_everything
    assert not policy.decide("example.com", 443).allowed
    assert not policy.decide("8.8.8.8", 443).allowed


def test_builtin_network_allows_every_public_destination() -> None:
    profile = load_profile("network")
    assert profile is BUILTIN_PROFILES["network"]
    assert profile.network.outbound.insecure_allow_all
    policy = compile_policy(profile)
    assert policy.allow_all
    assert policy.ports == (80, 443)
    assert policy.decide("example.com", 443, "93.184.216.34").allowed
    assert not policy.decide("example.com", 443, "10.0.0.1").allowed


def test_builtin_names_win_over_files_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "none").write_text("network: {outbound: {insecure_allow_all: true}}\n")
    assert load_profile("none") is BUILTIN_PROFILES["none"]
    assert load_profile("./none").network.outbound.insecure_allow_all


# --- errors: file, field path and value ------------------------------------------------


# data, field path, offending value (as it appears in the message), fragment of the reason
FIELD_ERRORS: list[tuple[object, str, str, str]] = [
    ({"name": 5}, "name", "5", "string"),
    ({"read": "/data"}, "read", '"/data"', ""),
    ({"write": [1]}, "write.0", "1", "string"),
    ({"privileged": True}, "privileged", "true", "must be false"),
    ({"network": None}, "network", "null", ""),
    ({"network": {"mode": "host"}}, "network.mode", '"host"', "bridge"),
    ({"network": {"outbound": {"insecure_allow_all": "maybe"}}},
     "network.outbound.insecure_allow_all", '"maybe"', "boolean"),
    ({"network": {"outbound": {"allow_host": "example.com"}}},
     "network.outbound.allow_host", '"example.com"', "list"),
    ({"network": {"outbound": {"allow_host": ["ok.com", ""]}}},
     "network.outbound.allow_host", "''", "empty host"),
    ({"network": {"outbound": {"allow_host": [" example.com"]}}},
     "network.outbound.allow_host", "' example.com'", "whitespace"),
    ({"network": {"outbound": {"allow_host": ["exa\tmple.com"]}}},
     "network.outbound.allow_host", "'exa\\tmple.com'", "control character"),
    ({"network": {"outbound": {"allow_host": ["https://example.com"]}}},
     "network.outbound.allow_host", "'https://example.com'", "scheme"),
    ({"network": {"outbound": {"allow_host": ["example.com/api"]}}},
     "network.outbound.allow_host", "'example.com/api'", "path"),
    ({"network": {"outbound": {"allow_host": ["example.com:8443"]}}},
     "network.outbound.allow_host", "'example.com:8443'", "port"),
    ({"network": {"outbound": {"allow_host": ["*"]}}},
     "network.outbound.allow_host", "'*'", "insecure_allow_all"),
    ({"network": {"outbound": {"allow_host": ["api.*.example.com"]}}},
     "network.outbound.allow_host", "'api.*.example.com'", "leading label"),
    ({"network": {"outbound": {"allow_host": ["*example.com"]}}},
     "network.outbound.allow_host", "'*example.com'", "leading label"),
    ({"network": {"outbound": {"allow_host": ["a" * 64 + ".com"]}}},
     "network.outbound.allow_host", "a" * 64, "63"),
    ({"network": {"outbound": {"allow_host": ["a." * 127 + "com"]}}},
     "network.outbound.allow_host", "a.a.a.", "253"),
    ({"network": {"outbound": {"allow_host": [42]}}},
     "network.outbound.allow_host", "42", "string"),
    ({"network": {"outbound": {"allow_port": 443}}},
     "network.outbound.allow_port", "443", "list"),
    ({"network": {"outbound": {"allow_port": [True]}}},
     "network.outbound.allow_port", "True", "1 to 65535"),
    ({"network": {"outbound": {"allow_port": [False]}}},
     "network.outbound.allow_port", "False", "1 to 65535"),
    ({"network": {"outbound": {"allow_port": ["443"]}}},
     "network.outbound.allow_port", "'443'", "1 to 65535"),
    ({"network": {"outbound": {"allow_port": [443.0]}}},
     "network.outbound.allow_port", "443.0", "1 to 65535"),
    ({"network": {"outbound": {"allow_port": [0]}}},
     "network.outbound.allow_port", "0", "1 to 65535"),
    ({"network": {"outbound": {"allow_port": [80, 65536]}}},
     "network.outbound.allow_port", "65536", "1 to 65535"),
    ({"network": {"outbound": {"allow_port": [-1]}}},
     "network.outbound.allow_port", "-1", "1 to 65535"),
    ({"network": {"outbound": {"allow_cidr": "10.0.0.0/8"}}},
     "network.outbound.allow_cidr", '"10.0.0.0/8"', "list"),
    ({"network": {"outbound": {"allow_cidr": ["10.0.0.0/33"]}}},
     "network.outbound.allow_cidr", "'10.0.0.0/33'", "not an IPv4 or IPv6 network"),
    ({"network": {"outbound": {"allow_cidr": ["10.0.0.0/8", "not-a-net"]}}},
     "network.outbound.allow_cidr", "'not-a-net'", "not an IPv4 or IPv6 network"),
    ({"network": {"outbound": {"allow_cidr": ["fd00::/129"]}}},
     "network.outbound.allow_cidr", "'fd00::/129'", "not an IPv4 or IPv6 network"),
    ({"network": {"outbound": {"allow_cidr": [""]}}},
     "network.outbound.allow_cidr", "''", "not an IPv4 or IPv6 network"),
    ({"network": {"outbound": {"allow_cidr": [" 10.0.0.0/8"]}}},
     "network.outbound.allow_cidr", "' 10.0.0.0/8'", "not an IPv4 or IPv6 network"),
    ({"network": {"outbound": {"allow_cidr": [167772160]}}},
     "network.outbound.allow_cidr", "167772160", "not an IPv4 or IPv6 network"),
    ({"network": {"inbound": {"allow_host": ["exa mple.com"]}}},
     "network.inbound.allow_host", "'exa mple.com'", "whitespace"),
]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize(("data", "field", "value", "reason"), FIELD_ERRORS)
def test_field_errors_name_file_field_and_value(
    tmp_path: Path, suffix: str, data: object, field: str, value: str, reason: str
) -> None:
    path = write(tmp_path, "bad" + suffix, data)
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    err = info.value
    message = str(err)
    assert isinstance(err, UsageError)
    assert err.exit_code == 2
    assert message.startswith(f"{path}: "), message
    assert f" {field} = " in message, message
    assert value in message, message
    assert reason in message, message
    assert "\n" not in message


# data, full key path, suggestion (None: the known keys are listed)
UNKNOWN_KEYS: list[tuple[object, str, str | None]] = [
    ({"nmae": "x"}, "nmae", "name"),
    ({"privilegd": False}, "privilegd", "privileged"),
    ({"netwrok": {}}, "netwrok", "network"),
    ({"network": {"outbond": {}}}, "network.outbond", "outbound"),
    ({"network": {"inbund": {}}}, "network.inbund", "inbound"),
    ({"network": {"mdoe": "none"}}, "network.mdoe", "mode"),
    ({"network": {"outbound": {"allow_hosts": []}}}, "network.outbound.allow_hosts",
     "allow_host"),
    ({"network": {"outbound": {"allow_ports": [80]}}}, "network.outbound.allow_ports",
     "allow_port"),
    ({"network": {"outbound": {"allowCidr": []}}}, "network.outbound.allowCidr", "allow_cidr"),
    ({"network": {"outbound": {"insecure_allow_al": True}}},
     "network.outbound.insecure_allow_al", "insecure_allow_all"),
    ({"network": {"inbound": {"allow_hosts": []}}}, "network.inbound.allow_hosts",
     "allow_host"),
    ({"network": {"outbound": {"zzzzzz": 1}}}, "network.outbound.zzzzzz", None),
]


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
@pytest.mark.parametrize(("data", "key", "suggestion"), UNKNOWN_KEYS)
def test_unknown_key_is_named_with_the_closest_known_key(
    tmp_path: Path, suffix: str, data: object, key: str, suggestion: str | None
) -> None:
    path = write(tmp_path, "bad" + suffix, data)
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert info.value.exit_code == 2
    assert message.startswith(f"{path}: "), message
    assert f"unknown key '{key}'" in message, message
    if suggestion is None:
        assert "allow_host" in message and "allow_cidr" in message, message
    else:
        assert f"did you mean '{suggestion}'" in message, message


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("bad.json", "{", "not valid JSON"),
        ("bad.json", '{"name": "x",}', "not valid JSON"),
        ("bad.json", "", "not valid JSON"),
        ("bad.json", "name: x\n", "not valid JSON"),
        ("bad.yaml", "network: [\n", "not valid YAML"),
        ("bad.yaml", "a: b: c\n", "not valid YAML"),
        ("bad.yaml", "allow_host: [*.example.com]\n", "not valid YAML"),
        ("bad.yml", "\tname: x\n", "not valid YAML"),
    ],
)
def test_invalid_syntax_is_one_clear_error(
    tmp_path: Path, name: str, content: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert info.value.exit_code == 2
    assert message.startswith(f"{path}: {fragment}"), message
    assert "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("content", "fragment"),
    [("", "None"), ("[]\n", "[]"), ("- a\n- b\n", "['a', 'b']"), ("just text\n", "just text")],
)
def test_a_profile_must_be_a_mapping(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ProfileError, match="must be a mapping") as info:
        load_profile(str(path))
    assert str(info.value).startswith(f"{path}: ")
    assert fragment in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(ProfileError) as info:
        load_profile(str(path))
    message = str(info.value)
    assert info.value.exit_code == 2
    assert message.startswith(f"{path}: no such profile file"), message
    assert "none" in message and "network" in message  # names the built-ins
    assert "\n" not in message


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile") as info:
        load_profile(str(tmp_path))  # a directory
    assert str(info.value).startswith(f"{tmp_path}: ")
    binary = tmp_path / "p.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(str(binary))


# --- with_overrides --------------------------------------------------------------------


def dump(profile: Profile) -> dict[str, Any]:
    return dataclasses.asdict(profile)


def test_overrides_merge_into_a_new_profile(tmp_path: Path) -> None:
    loaded = load_data(tmp_path, "p.json", FULL)
    before = dump(loaded)
    hosts = ["new.example.net", "*.api.test", "api.example.com"]
    ports = [9000, 443]
    cidrs = ["172.20.0.0/16"]
    hosts_copy, ports_copy, cidrs_copy = copy.deepcopy((hosts, ports, cidrs))

    merged = with_overrides(loaded, allow_host=hosts, allow_port=ports, allow_cidr=cidrs)

    assert merged is not loaded
    assert dump(loaded) == before  # the loaded profile is untouched
    assert (hosts, ports, cidrs) == (hosts_copy, ports_copy, cidrs_copy)  # so are the inputs
    out = merged.network.outbound
    assert out.allow_host == (
        *loaded.network.outbound.allow_host,
        HostPattern("new.example.net"),
        HostPattern("api.test", subdomains=True),
    )
    assert out.allow_port == (443, 8443, 9000)
    assert out.allow_cidr == (
        *loaded.network.outbound.allow_cidr,
        ipaddress.ip_network("172.20.0.0/16"),
    )
    # Everything that was not overridden is carried over.
    assert merged.name == loaded.name
    assert merged.read == loaded.read and merged.write == loaded.write
    assert merged.network.mode == loaded.network.mode
    assert merged.network.inbound == loaded.network.inbound
    assert out.insecure_allow_all == loaded.network.outbound.insecure_allow_all


def test_overrides_accept_any_iterable() -> None:
    merged = with_overrides(
        BUILTIN_PROFILES["none"],
        allow_host=(h for h in ["a.test", "b.test"]),
        allow_port=iter([8080]),
        allow_cidr=("10.1.0.0/16",),
    )
    out = merged.network.outbound
    assert out.allow_host == (HostPattern("a.test"), HostPattern("b.test"))
    assert out.allow_port == (8080,)
    assert out.allow_cidr == (ipaddress.ip_network("10.1.0.0/16"),)


@pytest.mark.parametrize("name", sorted(BUILTIN_PROFILES))
def test_overriding_builtins_leaves_them_unchanged(name: str) -> None:
    builtin = BUILTIN_PROFILES[name]
    before = copy.deepcopy(dump(builtin))
    merged = with_overrides(load_profile(name), allow_host=["example.com"], allow_port=[8080],
                            allow_cidr=["10.0.0.0/8"])
    assert merged is not builtin
    assert dump(builtin) == before
    assert load_profile(name) is builtin
    assert dump(load_profile(name)) == before
    assert merged.network.outbound.allow_port == (8080,)
    assert merged.network.outbound.insecure_allow_all == builtin.network.outbound.insecure_allow_all


def test_overriding_none_opens_only_the_given_host() -> None:
    merged = with_overrides(BUILTIN_PROFILES["none"], allow_host=["api.example.com"])
    assert compile_policy(merged).decide("api.example.com", 443).allowed
    assert not compile_policy(merged).decide("www.example.com", 443).allowed
    assert not compile_policy(BUILTIN_PROFILES["none"]).decide("api.example.com", 443).allowed


def test_no_overrides_give_an_equal_profile(tmp_path: Path) -> None:
    loaded = load_data(tmp_path, "p.json", FULL)
    assert with_overrides(loaded) == loaded
    assert with_overrides(loaded, allow_host=[], allow_port=(), allow_cidr=iter([])) == loaded


def test_overrides_keep_absent_ports_absent_and_empty_ports_empty() -> None:
    absent = parse_profile({"network": {"outbound": {"allow_host": ["a.test"]}}}, "p")
    empty = parse_profile({"network": {"outbound": {"allow_host": ["a.test"],
                                                     "allow_port": []}}}, "p")
    # Adding a host does not change the port rules: absent stays 80/443 ...
    assert with_overrides(absent, allow_host=["b.test"]).network.outbound.allow_port is None
    assert compile_policy(with_overrides(absent, allow_host=["b.test"])).ports == (80, 443)
    # ... and an explicit empty list (no port at all) must not fall back to 80/443.
    widened = with_overrides(empty, allow_host=["b.test"])
    assert widened.network.outbound.allow_port == ()
    assert compile_policy(widened).ports == ()
    assert not compile_policy(widened).decide("b.test", 443).allowed
    assert with_overrides(empty, allow_cidr=["10.0.0.0/8"]).network.outbound.allow_port == ()
    assert with_overrides(empty, allow_port=[22]).network.outbound.allow_port == (22,)


def test_allow_port_override_replaces_the_default_ports() -> None:
    # `--allow-port` help: "Allowed destination port (default 80 and 443)": once a port is
    # given, the defaults no longer apply (as with allow_port in a file).
    absent = parse_profile({"network": {"outbound": {"allow_host": ["a.test"]}}}, "p")
    merged = with_overrides(absent, allow_port=[8080])
    assert merged.network.outbound.allow_port == (8080,)
    assert compile_policy(merged).ports == (8080,)


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"allow_host": ["ok.test", "http://bad.test"]}, "http://bad.test"),
        ({"allow_host": ["*"]}, "'*'"),
        ({"allow_port": [0]}, "0"),
        ({"allow_port": [65536]}, "65536"),
        ({"allow_cidr": ["10.0.0.0/40"]}, "10.0.0.0/40"),
    ],
)
def test_bad_overrides_are_profile_errors(kwargs: dict[str, Any], value: str) -> None:
    base = BUILTIN_PROFILES["none"]
    before = dump(base)
    with pytest.raises(ProfileError) as info:
        with_overrides(base, **kwargs)
    message = str(info.value)
    assert info.value.exit_code == 2
    assert message.startswith("command line: "), message
    assert next(iter(kwargs)) in message
    assert value in message
    assert dump(base) == before
    with pytest.raises(ProfileError, match=r"^--allow-host: "):
        with_overrides(base, allow_host=[""], source="--allow-host")


@given(
    st.lists(st.from_regex(r"[a-z][a-z0-9]{0,10}\.(?:test|example)", fullmatch=True),
             max_size=5),
    st.lists(st.integers(1, 65535), max_size=5),
)
def test_generated_overrides(hosts: list[str], ports: list[int]) -> None:
    base = parse_profile({"network": {"outbound": {"allow_host": ["base.test"],
                                                    "allow_port": [443]}}}, "p")
    before = dump(base)
    hosts_copy, ports_copy = list(hosts), list(ports)
    merged = with_overrides(base, allow_host=hosts, allow_port=ports)
    assert dump(base) == before
    assert (hosts, ports) == (hosts_copy, ports_copy)
    out = merged.network.outbound
    assert [p.name for p in out.allow_host] == list(dict.fromkeys(["base.test", *hosts]))
    assert list(out.allow_port or ()) == list(dict.fromkeys([443, *ports]))
    policy = compile_policy(merged)
    for host in hosts:
        for port in ports:
            assert policy.decide(host, port).allowed
