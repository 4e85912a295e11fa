"""Load profiles from files or built-ins; merge command-line overrides into a new profile.

Whatever comes from outside is validated by the schema (schema.py, pydantic), imported
only then: a built-in profile with nothing added needs no validation, and a run with it
imports no pydantic.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from netfence.errors import ProfileError
from netfence.profile.model import InboundNetwork, Network, OutboundNetwork, Profile

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

# Constants: these values are valid.
BUILTIN_PROFILES: dict[str, Profile] = {
    "none": Profile(name="none"),
    "network": Profile(
        name="network",
        network=Network(outbound=OutboundNetwork(insecure_allow_all=True)),
    ),
}


def _model_at(loc: Sequence[int | str]) -> type[BaseModel]:
    """The model class that owns the field at `loc` (for suggesting a known key)."""
    from pydantic import BaseModel

    from netfence.profile.schema import ProfileSchema

    model: type[BaseModel] = ProfileSchema
    for part in loc:
        field = model.model_fields.get(str(part))
        annotation = field.annotation if field else None
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            break
    return model


def _describe(source: str, exc: ValidationError) -> str:
    import difflib

    err = exc.errors()[0]
    loc = [p for p in err["loc"] if p != "__root__"]
    path = ".".join(str(p) for p in loc) or "(top level)"
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        known = sorted(_model_at(loc[:-1]).model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known keys: {', '.join(known)}"
        return f"{source}: unknown key '{path}'{hint}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "literal_error" and loc and loc[-1] == "privileged":
        msg = "privileged workloads cannot be fenced; it must be false"
    elif err["type"] == "literal_error" and loc and loc[-1] == "mode":
        msg = "network.mode must be 'bridge' or 'none' (netfence never shares the host network)"
    return f"{source}: {path} = {json.dumps(value, default=str)}: {msg}"


def parse_profile(data: object, source: str) -> Profile:
    """Validate already-decoded profile data; errors name source, field path and value."""
    if not isinstance(data, Mapping):
        raise ProfileError(f"{source}: a profile must be a mapping (JSON object), got {data!r}")
    from pydantic import ValidationError

    from netfence.profile.schema import ProfileSchema

    try:
        return ProfileSchema.model_validate(dict(data)).value()
    except ValidationError as exc:
        raise ProfileError(_describe(source, exc)) from None


def load_profile(ref: str) -> Profile:
    """A built-in profile by name (`none`, `network`) or a JSON/YAML file by path."""
    if ref in BUILTIN_PROFILES:
        return BUILTIN_PROFILES[ref]
    path = Path(ref)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ProfileError(
            f"{ref}: no such profile file (built-in profiles: {', '.join(BUILTIN_PROFILES)})"
        ) from None
    except OSError as exc:
        raise ProfileError(f"{ref}: cannot read profile: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{ref}: cannot read profile: {exc}") from None
    import yaml  # only for a profile file: start-up with a built-in profile is measured

    try:
        # YAML is a superset of JSON, but JSON errors read better from the JSON parser.
        data: Any = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        detail = str(exc).splitlines()[0]
        raise ProfileError(f"{ref}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                           f"{detail}") from None
    return parse_profile(data, ref)


def with_overrides(
    profile: Profile,
    *,
    allow_host: Iterable[str] = (),
    allow_port: Iterable[int] = (),
    allow_cidr: Iterable[str] = (),
    read: Iterable[str] = (),
    write: Iterable[str] = (),
    allow_unix_socket: Iterable[str] = (),
    source: str = "command line",
) -> Profile:
    """A new profile with extra allow entries and grants; `profile` and the iterables stay
    untouched. Grants must be absolute paths here (the command line makes them so)."""
    hosts, ports, cidrs = list(allow_host), list(allow_port), list(allow_cidr)
    grants = {"read": list(read), "write": list(write),
              "allow_unix_socket": list(allow_unix_socket)}
    if not (hosts or ports or cidrs or any(grants.values())):
        return profile
    from pydantic import ValidationError

    from netfence.profile.schema import OutboundSchema, ProfileSchema

    if any(grants.values()):
        merged_grants = {key: [*getattr(profile, key), *extra] for key, extra in grants.items()}
        try:
            checked = ProfileSchema.model_validate(merged_grants)
        except ValidationError as exc:
            raise ProfileError(_describe(source, exc)) from None
        profile = dataclasses.replace(profile, **{key: getattr(checked, key) for key in grants})
    if not (hosts or ports or cidrs):
        return profile
    out = profile.network.outbound
    merged = {
        "insecure_allow_all": out.insecure_allow_all,
        # The profile's own entries as parsed: only the new ones are parsed again.
        "allow_host": [*out.allow_host, *hosts],
        # None (absent: 80 and 443) stays None unless ports are added; an explicit [] (no
        # port at all) must stay [], never fall back to the defaults.
        "allow_port": (
            list(out.allow_port or ()) + ports
            if (ports or out.allow_port is not None)
            else None
        ),
        "allow_cidr": [str(c) for c in out.allow_cidr] + cidrs,
    }
    try:
        outbound = OutboundSchema.model_validate(merged).value()
    except ValidationError as exc:
        raise ProfileError(_describe(source, exc)) from None
    network = dataclasses.replace(profile.network, outbound=outbound)
    return dataclasses.replace(profile, network=network)


def profile_data(profile: Profile) -> dict[str, Any]:
    """A profile as the JSON data parse_profile reads back into the same profile."""
    network = profile.network
    out = network.outbound
    return {
        "name": profile.name,
        "read": list(profile.read),
        "write": list(profile.write),
        "allow_unix_socket": list(profile.allow_unix_socket),
        "network": {
            "mode": network.mode,
            "outbound": {
                "insecure_allow_all": out.insecure_allow_all,
                "allow_host": [str(h) for h in out.allow_host],
                "allow_port": None if out.allow_port is None else list(out.allow_port),
                "allow_cidr": [str(c) for c in out.allow_cidr],
            },
            "inbound": {"allow_host": [str(h) for h in network.inbound.allow_host]},
        },
    }


__all__ = ["BUILTIN_PROFILES", "InboundNetwork", "load_profile", "parse_profile", "profile_data",
           "with_overrides"]
