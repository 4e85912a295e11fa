"""backends/__init__.py: backend selection (--proxy / NETFENCE_NETWORK_PROXY)."""

from __future__ import annotations

import importlib

import pytest

from netfence.backends import DEFAULT_BACKEND, ENV_VAR, SUPPORTED, NetworkProxy, get_backend
from netfence.errors import NetfenceError, UsageError


@pytest.fixture(autouse=True)
def _no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)


def backend_class(name: str) -> type[NetworkProxy]:
    module = importlib.import_module(f"netfence.backends.{name}")
    cls: type[NetworkProxy] = getattr(module, {"envoy": "EnvoyProxy", "squid": "SquidProxy"}[name])
    return cls


def test_contract_constants() -> None:
    assert ENV_VAR == "NETFENCE_NETWORK_PROXY"
    assert SUPPORTED == ("envoy", "squid")
    assert DEFAULT_BACKEND == "envoy"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("envoy", "envoy"),
        ("squid", "squid"),
        ("ENVOY", "envoy"),
        ("Squid", "squid"),
        ("sQuId", "squid"),
        (" envoy ", "envoy"),
        ("squid\n", "squid"),
    ],
)
def test_explicit_name(value: str, expected: str) -> None:
    backend = get_backend(value)
    assert type(backend) is backend_class(expected)
    assert isinstance(backend, NetworkProxy)
    assert backend.name == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("envoy", "envoy"), ("squid", "squid"), ("SQUID", "squid"), ("Envoy", "envoy"),
     ("", "envoy")],
)
def test_environment_variable_when_no_name_is_given(
    monkeypatch: pytest.MonkeyPatch, value: str, expected: str
) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    assert type(get_backend()) is backend_class(expected)
    assert type(get_backend(None)) is backend_class(expected)


def test_default_is_envoy_without_name_or_environment() -> None:
    backend = get_backend()
    assert type(backend) is backend_class("envoy")
    assert backend.name == "envoy"


def test_envoy_listens_in_netns_and_squid_does_not() -> None:
    assert get_backend("envoy").listens_in_netns is True
    assert get_backend("squid").listens_in_netns is False


def test_each_call_gives_a_new_backend() -> None:
    assert get_backend("envoy") is not get_backend("envoy")


@pytest.mark.parametrize(
    ("env", "explicit", "expected"),
    [
        ("squid", "envoy", "envoy"),
        ("envoy", "squid", "squid"),
        ("haproxy", "squid", "squid"),  # an explicit name wins even over a bad variable
        ("haproxy", "ENVOY", "envoy"),
    ],
)
def test_explicit_name_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, env: str, explicit: str, expected: str
) -> None:
    monkeypatch.setenv(ENV_VAR, env)
    assert type(get_backend(explicit)) is backend_class(expected)


UNKNOWN = ["haproxy", "nginx", "envoy2", "squid3", "env oy", "traefik", "", "  ", "none", "*"]


@pytest.mark.parametrize("value", UNKNOWN)
def test_unknown_explicit_name_is_a_usage_error(value: str) -> None:
    with pytest.raises(UsageError) as info:
        get_backend(value)
    err = info.value
    assert isinstance(err, NetfenceError)
    assert err.exit_code == 2
    message = str(err)
    assert repr(value) in message, message
    assert "envoy" in message and "squid" in message
    assert "--proxy" in message
    assert "\n" not in message


@pytest.mark.parametrize("value", [v for v in UNKNOWN if v.strip()])
def test_unknown_environment_value_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(UsageError) as info:
        get_backend()
    err = info.value
    assert err.exit_code == 2
    message = str(err)
    assert repr(value) in message, message
    assert "envoy" in message and "squid" in message
    assert ENV_VAR in message


def test_unknown_value_fails_even_when_the_other_source_is_valid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_VAR, "squid")
    with pytest.raises(UsageError, match="haproxy"):
        get_backend("haproxy")
