"""Package references as commands: `uvx://NAME[@VERSION][#COMMAND]` (PyPI) and
`npx://NAME[@VERSION][#COMMAND]` (npm). Pure: parsing and the cache key, nothing else.

A version is exact or absent (`@latest` means absent): the cache is keyed by exact
versions, so a range or a tag would need the registry at every start to mean anything.
`#COMMAND` picks one of a package's commands when it has several.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from netfence.errors import UsageError

Kind = Literal["uvx", "npx"]
KINDS: tuple[Kind, ...] = ("uvx", "npx")
SCHEMES = tuple(f"{kind}://" for kind in KINDS)

# PEP 508 names (case-insensitive); compared and stored in PEP 503's normal form.
_PYPI_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")
# npm names: an optional @scope/, then a name; url-safe, never starting with . or _.
_NPM_NAME = re.compile(r"^(?:@[a-z0-9][a-z0-9._~-]*/)?[a-z0-9][a-z0-9._~-]*$")
# An exact PEP 440 version (epoch, local part), no operator, no wildcard.
_PYPI_VERSION = re.compile(r"^(?:[0-9]+!)?[0-9]+(?:\.[0-9]+)*(?:[._-]?[A-Za-z]+[0-9]*)*"
                           r"(?:\+[A-Za-z0-9.]+)?$")
# An exact semver version, as npm publishes them.
_NPM_VERSION = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")
# A command: a console script or an npm bin name.
_COMMAND = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class PackageRef:
    kind: Kind
    name: str  # normalised: PEP 503 for PyPI, as published for npm
    version: str | None = None  # exact; None: the latest (resolved at install)
    command: str | None = None  # which of its commands to run; None: the package's own

    @property
    def key(self) -> tuple[str, ...]:
        """The cache directory's parts below the cache root, without the version:
        ("uvx", "mcp-server-time"), ("npx", "@scope", "name")."""
        return (self.kind, *self.name.split("/"))

    @property
    def default_command(self) -> str:
        """The command uvx and npx run for a package: the one named after it (an npm
        scope left out)."""
        return self.name.rsplit("/", 1)[-1]

    def with_version(self, version: str | None) -> PackageRef:
        return PackageRef(self.kind, self.name, version, self.command)

    def __str__(self) -> str:
        text = f"{self.kind}://{self.name}"
        if self.version:
            text += f"@{self.version}"
        if self.command:
            text += f"#{self.command}"
        return text


def is_package(word: str) -> bool:
    return word.startswith(SCHEMES)


def normalise_pypi(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def parse(text: str) -> PackageRef:
    """`uvx://...` or `npx://...` as a PackageRef; one line naming what is wrong."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in KINDS:
        raise UsageError(f"{text!r}: not a package (uvx://NAME[@VERSION] or "
                         "npx://NAME[@VERSION])")
    kind: Kind = "uvx" if scheme == "uvx" else "npx"
    body, hash_sep, command = rest.partition("#")
    if hash_sep and not _COMMAND.match(command):
        raise UsageError(f"{text!r}: #{command} is not a command name")
    # An npm scope starts with '@': the version's '@' is the last one after the name.
    at = body.rfind("@")
    if at > 0:
        name, version = body[:at], body[at + 1:]
    else:
        name, version = body, None
    if version == "latest":
        version = None
    if kind == "uvx":
        if not _PYPI_NAME.match(name):
            raise UsageError(f"{text!r}: {name!r} is not a PyPI package name")
        name = normalise_pypi(name)
        version_ok = version is None or bool(_PYPI_VERSION.match(version))
    else:
        if not _NPM_NAME.match(name) or ".." in name:
            raise UsageError(f"{text!r}: {name!r} is not an npm package name")
        version_ok = version is None or bool(_NPM_VERSION.match(version))
    if not version_ok:
        raise UsageError(f"{text!r}: {version!r} is not an exact version",
                         remedy=f"give an exact version, e.g. {kind}://{name}@1.2.3, or none "
                                "for the latest")
    return PackageRef(kind, name, version, command or None)
