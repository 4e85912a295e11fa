"""The Squid backend: an egress forward proxy and an ingress accelerator, one process each.

Squid cannot listen inside another network namespace, so a runtime relays into the
workload's namespace for it; nothing here knows about namespaces.

Egress decisions follow the order of Policy.decide, which is also the order that leaks
nothing: `http_access` lines are evaluated top to bottom and a `dst` ACL resolves the name,
so every name check (`dstdomain -n`, no lookups) and the port check come before the first
address check. Each deny line ends in its own ACL so that `deny_info` names the reason:
the error page file is ERR_<REASON>, it is what `%err_code` logs and parse_decision reads.

Squid starts as root, reads its config, then drops to the `proxy` user before it opens
logs and error pages. The state dir stays 0700 root, so:
- logs go to `/dev/stdout` and `/dev/stderr`: reopening them goes through /proc/self/fd and
  checks only the file itself, which is pre-created owned by `proxy` (FileSpec owner);
- error pages are read through `/proc/self/cwd`: a small `sh` wrapper, still root, hands
  the page directory to `proxy` and makes it Squid's working directory. The directory can
  only be reached through that magic link, never by walking through the state dir.

Unprivileged (Placement.unprivileged), Squid runs as the calling user, who owns the state
dir: no file gets an owner and the wrapper only enters the page directory. Squid started
as non-root ignores `cache_effective_user` without a word (verified with Squid 5.7).

A new policy is a SIGHUP (`netfence update`): Squid reconfigures in place, the same
process (the wrapper execs it). Verified with Squid 5.7, as root and as a plain user: it
re-reads its 0600 root-owned config (it keeps root as its saved user id) and its error
pages; established connections, CONNECT tunnels included, stay up, even to a host the new
policy drops (decided once, as with Envoy). But it closes its listening port before it
parses the new config and opens it again after: new connections are refused meanwhile,
for about as long as the parse takes (10-20 ms with a few names, 0.14-0.18 s with
10,000, 1.4-1.8 s with 100,000), and established ones stall as long. A client's
keep-alive connection stays open, its next request decided by the new config.
SquidProxy.settled says when the reconfigured Squid listens again with the new config:
each config names a marker log after the policy it renders, and Squid logs each log it
opens (CONFIG_MARK).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import signal
from collections.abc import Iterable, Sequence
from pathlib import Path
from urllib.parse import unquote

from netfence.backends.base import (
    DNS_PORT,
    DecisionRecord,
    Endpoint,
    FileSpec,
    NetworkProxy,
    Placement,
    ProcessSpec,
    ProxySetup,
    Reload,
    proxy_env,
)
from netfence.errors import UsageError
from netfence.policy import DENIED_NAMES, AddressRule, Policy, Reason
from netfence.policy.decision import REMEDIES, remedy_text
from netfence.policy.denied import DENIED_SUFFIXES, IPNetwork, is_denied_zone
from netfence.profile import HostPattern
from netfence.profile.host_regex import NAME_RE
from netfence.profile.hosts import MAX_NAME

SQUID_USER = "proxy"
LOG_FORMAT_TAG = "nf1"
# Squid's own built-in error page names: we render each one, so no request ever shows a
# page from outside the generated directory and Squid does not complain at start.
SQUID_ERROR_PAGES: tuple[str, ...] = (
    "ERR_ACCESS_DENIED", "ERR_ACL_TIME_QUOTA_EXCEEDED", "ERR_AGENT_CONFIGURE",
    "ERR_AGENT_WPAD", "ERR_CACHE_ACCESS_DENIED", "ERR_CACHE_MGR_ACCESS_DENIED",
    "ERR_CANNOT_FORWARD", "ERR_CONFLICT_HOST", "ERR_CONNECT_FAIL", "ERR_DIR_LISTING",
    "ERR_DNS_FAIL", "ERR_ESI", "ERR_FORWARDING_DENIED", "ERR_FTP_DISABLED",
    "ERR_FTP_FAILURE", "ERR_FTP_FORBIDDEN", "ERR_FTP_NOT_FOUND", "ERR_FTP_PUT_CREATED",
    "ERR_FTP_PUT_ERROR", "ERR_FTP_PUT_MODIFIED", "ERR_FTP_UNAVAILABLE",
    "ERR_GATEWAY_FAILURE", "ERR_ICAP_FAILURE", "ERR_INVALID_REQ", "ERR_INVALID_RESP",
    "ERR_INVALID_URL", "ERR_LIFETIME_EXP", "ERR_NO_RELAY", "ERR_ONLY_IF_CACHED_MISS",
    "ERR_PRECONDITION_FAILED", "ERR_PROTOCOL_UNKNOWN", "ERR_READ_ERROR",
    "ERR_READ_TIMEOUT", "ERR_SECURE_CONNECT_FAIL", "ERR_SHUTTING_DOWN",
    "ERR_SOCKET_FAILURE", "ERR_TOO_BIG", "ERR_UNSUP_HTTPVERSION", "ERR_UNSUP_REQ",
    "ERR_URN_RESOLVE", "ERR_WRITE_ERROR", "ERR_ZERO_SIZE_OBJECT",
)
# Squid's pages for requests it could not even parse: the policy calls those invalid.
_INVALID_PAGES = frozenset(
    {"ERR_INVALID_URL", "ERR_INVALID_REQ", "ERR_UNSUP_REQ", "ERR_PROTOCOL_UNKNOWN",
     "ERR_UNSUP_HTTPVERSION"}
)
# The wrapper runs as root: it gives the page directory to the proxy user and enters it.
# Squid logs each transaction as it ends, unbuffered; yet after SIGINT it waits a second
# for nothing, then one more tick of its event loop, before it exits (about 2 s). Once
# the workload is gone and its connections closed, what is still to be logged is written
# in well under this.
SHUTDOWN_GRACE = 0.3
_WRAPPER = 'chown "$1" "$2" && cd "$2" && shift 2 && exec "$@"'
# Unprivileged: the caller owns the pages already (and could not give them away); the
# same arguments, the user ($1) unused.
_WRAPPER_UNPRIVILEGED = 'cd "$2" && shift 2 && exec "$@"'
# Long enough for SSE and streamable-HTTP streams that stay quiet for hours.
_STREAM_TIMEOUTS = (
    "read_timeout 24 hours",
    "write_timeout 24 hours",
    "client_lifetime 7 days",
    "request_timeout 5 minutes",
    "connect_timeout 30 seconds",
)
_CHUNK = 400  # characters of ACL values per config line; Squid's line buffer is bounded
# Each config names a marker after the policy it renders: an extra access log that never
# logs (`!all`), NF_CONFIG_<digest>, in the page directory. Squid logs the name of each log
# it opens, at start and after each reconfigure, then each port it listens on once it is
# done: its cache.log says which config it serves. (It logs the config files it parses on
# a reconfigure only, not at start.)
CONFIG_MARK = "NF_CONFIG_"
_OPENING = "Logfile: opening log stdio:"
_RECONFIGURING = "Reconfiguring Squid Cache"
_LISTENING = re.compile(r"\| Accepting .*connections at ")
# How much of the end of cache.log settled() reads first: a (re)configuration logs a few
# dozen lines, and only the last one matters.
_LOG_TAIL = 256 * 1024


def page_name(reason: Reason) -> str:
    """The error page (and `%err_code`) for a denial reason: ERR_NOT_ALLOWLISTED etc."""
    return f"ERR_{reason.value.upper()}"


_PAGE_REASONS = {page_name(r): r for r in Reason if r is not Reason.ALLOWED}
# One page per address rule, named after its reason and network, so the page (and the
# logged %err_code) can say which range denied the request: Squid's pages cannot show
# the address itself (%I is unknown until a connection exists).
_RULE_SEP = "__"  # never in a reason name (single underscores)


def rule_page_name(rule: AddressRule) -> str:
    """ERR_PRIVATE_ADDRESS__10.0.0.0_8, ERR_LOOPBACK_ADDRESS__--1_128 ('/' -> '_',
    ':' -> '-': page names are file names and ':' means a URL to deny_info)."""
    net = str(rule.network).replace("/", "_").replace(":", "-")
    return f"{page_name(rule.reason)}{_RULE_SEP}{net}"


def rule_network(err_code: str) -> str | None:
    """The network a rule page names (the inverse of rule_page_name), if it is one."""
    _, sep, net = err_code.partition(_RULE_SEP)
    if not sep:
        return None
    text, _, bits = net.rpartition("_")
    return f"{text.replace('-', ':')}/{bits}"


def _acl(reason: Reason) -> str:
    return f"nf_{reason.value}"


def _listen(endpoint: Endpoint) -> str:
    if endpoint.netns is not None:
        raise ValueError("squid cannot listen in another network namespace; relay to it")
    return str(endpoint)


def service_name(placement: Placement, role: str) -> str:
    """A Squid `-n` name unique per state dir and role (alphanumeric, at most 32)."""
    digest = hashlib.sha256(f"{placement.state_dir}\0{placement.workload_name}".encode())
    return f"nf{role[0]}{digest.hexdigest()[:20]}"


def _acl_lines(name: str, kind: str, values: Sequence[str]) -> list[str]:
    """`acl NAME KIND values...` split over several lines (Squid accumulates them)."""
    lines: list[str] = []
    chunk: list[str] = []
    size = 0
    for value in values:
        if chunk and size + len(value) + 1 > _CHUNK:
            lines.append(f"acl {name} {kind} {' '.join(chunk)}")
            chunk, size = [], 0
        chunk.append(value)
        size += len(value) + 1
    if chunk:
        lines.append(f"acl {name} {kind} {' '.join(chunk)}")
    return lines


def ip_host(text: str) -> str:
    """An IP literal as Squid spells a URL host before comparing it with dstdomain.

    Verified with Squid 5.7: IPv6 hosts keep their brackets and are compressed ([0:0::1]
    is [::1]); IPv4-mapped IPv6 and the legacy IPv4 spellings become dotted IPv4.
    """
    ip = ipaddress.ip_address(text)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return f"[{ip.compressed}]"
    return str(ip)


def tree_order(name: str) -> str:
    """A sort key in the order Squid's dstdomain splay tree keeps names (matchDomainName:
    compared from the last character, case-insensitively, '.' before any other).

    Inserted in that order, each name lands next to the previous one: 100,000 names
    parse in 0.1 s instead of 1.1 s. The order decides no request: no entry covers
    another (domain_values), so every name a request can match is one range of that
    order and the tree finds it whatever its shape.
    """
    return name.lower()[::-1].replace(".", "\0")


def domain_values(patterns: Iterable[HostPattern]) -> list[str]:
    """dstdomain values: `.name` for name + subdomains, `name` exact, IPs as written.

    Squid rejects or drops entries covered by another in the same ACL, so covered ones are
    left out: an exact name under a wildcard, or a wildcard under a wider one.
    """
    pats = list(dict.fromkeys(patterns))
    wild = {p.name for p in pats if p.subdomains}

    # Only the parents as deep as some wildcard can be one (100,000 names: 0.1 s less).
    depths = sorted({name.count(".") for name in wild})

    def covered(name: str, strict: bool) -> bool:
        dots = name.count(".")
        for depth in depths:  # its parents, shortest first, then the name unless strict
            if depth > dots or (strict and depth == dots):
                return False
            if (name if depth == dots else name.split(".", dots - depth)[-1]) in wild:
                return True
        return False

    out: list[str] = []
    # Names first, in the order Squid's dstdomain tree compares them (tree_order); IP
    # literals after, in text order.
    for p in sorted((p for p in pats if not p.is_ip), key=lambda p: tree_order(p.name)):
        if p.subdomains:
            if not covered(p.name, strict=True):
                out.append("." + p.name)
        elif not covered(p.name, strict=False):
            out.append(p.name)
    out += [ip_host(p.name) for p in sorted((p for p in pats if p.is_ip), key=lambda p: p.name)]
    return list(dict.fromkeys(out))


def denied_name_values() -> list[str]:
    """`.suffix` for each denied suffix, then the denied names not under one (Squid drops
    an entry another in the same ACL covers)."""
    return ["." + s for s in DENIED_SUFFIXES] + [n for n in DENIED_NAMES if not is_denied_zone(n)]


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _squid_form(net: IPNetwork) -> IPNetwork:
    """Squid stores IPv4 as IPv4-mapped IPv6, so ::ffff:a.b.c.d/N+96 *is* a.b.c.d/N there."""
    if isinstance(net, ipaddress.IPv6Network) and net.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(net.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((base, net.prefixlen - 96))
    return net


def _collapse(nets: Iterable[IPNetwork]) -> list[str]:
    """Merged, sorted network strings; Squid warns about and drops overlapping entries."""
    forms = [_squid_form(n) for n in nets]
    v4 = [n for n in forms if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in forms if isinstance(n, ipaddress.IPv6Network)]
    merged: list[IPNetwork] = [*ipaddress.collapse_addresses(v4),
                               *ipaddress.collapse_addresses(v6)]
    return [str(n) for n in merged]


def address_acls(policy: Policy) -> list[tuple[AddressRule, list[str]]]:
    """One `dst` ACL per address rule, in Policy.address_rules' order (lifts cut out).

    A liftable range has the lifting CIDRs cut out of it rather than an `!allowed` term on
    the line: a `dst` ACL matches when any resolved address matches, so a name resolving to
    one lifted and one denied address must still be refused.
    """
    out: list[tuple[AddressRule, list[str]]] = []
    for rule in policy.address_rules():
        values = _collapse(rule.networks)
        if values:
            out.append((rule, values))
    return out


def _common(placement: Placement, role: str) -> list[str]:
    """Settings both processes share: no cache, no identity leaks, logs, error pages."""
    resolver = placement.upstream_resolver
    if resolver.port != DNS_PORT:
        raise UsageError(
            f"the squid proxy can only use a DNS resolver on port 53, not {resolver}",
            remedy="pass --dns-upstream with port 53, or use --proxy envoy",
        )
    return [
        f"# Generated by netfence ({role}); edits are overwritten.",
        f"visible_hostname netfence-{role}",
        f"cache_effective_user {SQUID_USER}",
        "pid_filename none",
        # Names resolve only through the fence's resolver, never /etc/hosts.
        "hosts_file none",
        f"dns_nameservers {resolver.host}",
        "cache deny all",
        "cache_mem 0 MB",
        "via off",
        "forwarded_for delete",
        "httpd_suppress_version_string on",
        "shutdown_lifetime 1 seconds",
        *_STREAM_TIMEOUTS,
        # Nothing written behind our back: no netdb file, no ICMP helper, no rotation.
        "netdb_filename none",
        "pinger_enable off",
        "logfile_rotate 0",
        "client_db off",
        "error_directory /proc/self/cwd",
        # Milliseconds, as Envoy's: a policy change (netfence update) sorts among them.
        f"logformat netfence {LOG_FORMAT_TAG} %{{%Y-%m-%dT%H:%M:%S}}tg.%03tuZ %rm %>rd %>rP "
        "%>Hs %err_code %<a %>st %<st %tr",
        "access_log stdio:/dev/stdout netfence",
        "cache_log /dev/stderr",
        # The cache manager is never reachable from the workload.
        "http_access deny manager",
        f"deny_info {page_name(Reason.DENIED_NAME)} manager",
    ]


def render_egress(policy: Policy, placement: Placement) -> str:
    lines = _common(placement, "egress")
    lines.append(f"http_port {_listen(placement.egress_listen)}")
    # Refuse what a lenient parser would have to guess at (whitespace inside the URL,
    # malformed header lines) rather than guess differently from the policy.
    lines += ["relaxed_header_parser off", "uri_whitespace deny"]

    def deny(acl: str, reason: Reason, negate: bool = False, page: str | None = None) -> None:
        lines.append(f"http_access deny {'!' if negate else ''}{acl}")
        lines.append(f"deny_info {page or page_name(reason)} {acl}")

    # 0. The fence relays plain http:// and CONNECT tunnels; it never originates TLS or
    # speaks FTP for the workload (Envoy cannot either): anything else is refused first.
    lines.append("acl nf_connect method CONNECT")
    lines.append("acl nf_http proto HTTP")
    lines.append("http_access deny !nf_connect !nf_http")
    lines.append(f"deny_info {page_name(Reason.UNSUPPORTED_REQUEST)} nf_http")

    # 1. Names, before anything resolves them: one the policy would not read as a host
    # (a '-' at a label's edge, a label over 63, a name over 253) goes no further.
    # Squid has parsed IP literals already (it rewrites a valid IPv6 one in compressed
    # form, writes [::] and [::ffff:0.0.0.0] without brackets, and reads bracketed text
    # that is no address as a name), so addresses need only their characters checked
    # here; the full IPv6 grammar would defeat Squid's regex optimiser.
    valid = f"^({NAME_RE}|\\[[0-9A-Fa-f:.]+\\]|[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)$"
    lines.append(f"acl nf_valid_host dstdom_regex -n {valid}")
    lines.append(f"acl nf_long_host dstdom_regex -n ^[^[]{{{MAX_NAME + 1},}}$")
    deny("nf_valid_host", Reason.INVALID_HOST, negate=True)
    deny("nf_long_host", Reason.INVALID_HOST)
    lines += _acl_lines(_acl(Reason.DENIED_NAME), "dstdomain -n", denied_name_values())
    deny(_acl(Reason.DENIED_NAME), Reason.DENIED_NAME)
    allowlist = _acl(Reason.NOT_ALLOWLISTED)
    if policy.denies_everything:
        lines.append(f"acl {allowlist} src all")
        deny(allowlist, Reason.NOT_ALLOWLISTED)
        lines.append("http_access deny all")
        return "\n".join(lines) + "\n"
    if not policy.allow_all:
        lines += _acl_lines(allowlist, "dstdomain -n", domain_values(policy.hosts))
        deny(allowlist, Reason.NOT_ALLOWLISTED, negate=True)
    # 2. Ports: the URL port, which for CONNECT is the tunnel's port.
    ports = _acl(Reason.PORT_NOT_ALLOWED)
    # No port allowed (allow_port: []): port 0 never occurs, so every request is refused.
    port_values = ["1-65535"] if policy.any_port else [str(p) for p in policy.ports] or ["0"]
    lines += _acl_lines(ports, "port", port_values)
    deny(ports, Reason.PORT_NOT_ALLOWED, negate=True)
    # 3. The addresses the name resolves to (`dst` looks the name up, now allowed).
    for i, (rule, values) in enumerate(address_acls(policy)):
        acl = f"{_acl(rule.reason)}_{i}"
        lines += _acl_lines(acl, "dst", values)
        deny(acl, rule.reason, page=rule_page_name(rule))
    lines.append(f"http_access allow {ports}")
    lines.append("http_access deny all")
    return "\n".join(lines) + "\n"


def inbound_values(policy: Policy) -> list[str]:
    return domain_values(policy.inbound_allowlist)


def render_ingress(policy: Policy, placement: Placement) -> str:
    listen, upstream = placement.ingress_listen, placement.ingress_upstream
    if listen is None or upstream is None:
        raise ValueError("ingress needs both ingress_listen and ingress_upstream")
    if upstream.netns is not None:
        raise ValueError("squid cannot dial into another network namespace; relay to it")
    lines = _common(placement, "ingress")
    hosts = _acl(Reason.NOT_ALLOWLISTED)
    lines += [
        # An accelerator: the Host header names the site, the workload serves it.
        f"http_port {_listen(listen)} accel vhost",
        f"cache_peer {upstream.host} parent {upstream.port} 0 no-query no-digest "
        "originserver name=nf_workload",
        "cache_peer_access nf_workload allow all",
        # Only ever to the workload, never to the Host a client sent. (Squid still looks an
        # accepted Host up once for its network database; the answer is unused.)
        "never_direct allow all",
        *_acl_lines(hosts, "dstdomain -n", inbound_values(policy)),
        f"http_access deny !{hosts}",
        f"deny_info {page_name(Reason.NOT_ALLOWLISTED)} {hosts}",
        f"http_access allow {hosts}",
        "http_access deny all",
    ]
    return "\n".join(lines) + "\n"


def _page(text: str) -> str:
    return text + "\n"


def _deny_page(reason: Reason, detail: str = "", remedy: str | None = None) -> str:
    """One line, as Decision.describe() words it: Squid fills in %H (host), %p (port)."""
    text = f"netfence: denied %H:%p: {reason.value}{detail}"
    return _page(f"{text}; to allow: {remedy}" if remedy else text)


def _owner(placement: Placement) -> str | None:
    """Who Squid's files must belong to: the user it drops to, unless it cannot drop."""
    return None if placement.unprivileged else SQUID_USER


def error_pages(directory: Path, *, ingress: bool, rules: Sequence[AddressRule] = (),
                owner: str | None = SQUID_USER) -> tuple[FileSpec, ...]:
    """One page per denial reason and per address rule (one line: the reason, what it was
    about, and what would lift it)."""
    specs: list[FileSpec] = []
    for name in SQUID_ERROR_PAGES:
        body = _page(f"netfence: proxy error {name} for %U: %E")
        specs.append(FileSpec(directory / name, body, owner=owner))
    for reason in Reason:
        if reason is Reason.ALLOWED:
            continue
        template = REMEDIES[reason]
        if ingress and reason is Reason.NOT_ALLOWLISTED:
            template = "add it to network.inbound.allow_host"
        # Squid fills in %H (host) and %p (port); the denied address is not known here.
        remedy = template.format(host="%H", port="%p", cidr="ADDRESS") if template else None
        specs.append(FileSpec(directory / page_name(reason), _deny_page(reason, remedy=remedy),
                              owner=owner))
    for rule in rules:
        body = _deny_page(rule.reason, f" {rule.network}", rule.remedy)
        specs.append(FileSpec(directory / rule_page_name(rule), body, owner=owner))
    return tuple(specs)


def _process(placement: Placement, role: str, conf: Path, pages: Path, ready: Endpoint,
             reads: tuple[Path, ...]) -> tuple[ProcessSpec, tuple[FileSpec, ...]]:
    state = placement.state_dir
    stdout, stderr = state / f"squid-{role}-access.log", state / f"squid-{role}-cache.log"
    wrapper = _WRAPPER_UNPRIVILEGED if placement.unprivileged else _WRAPPER
    argv = ("/bin/sh", "-c", wrapper, "netfence-squid", SQUID_USER, str(pages),
            "squid", "-N", "-f", str(conf), "-n", service_name(placement, role))
    # Pre-created for the proxy user: Squid reopens them as /dev/stdout and /dev/stderr.
    owner = _owner(placement)
    logs = (FileSpec(stdout, "", owner=owner), FileSpec(stderr, "", owner=owner))
    # The wrapper hands the error pages to the proxy user and enters them (so passes their
    # 0700 as root), then Squid drops to that user. Unprivileged, it needs none of that.
    capabilities = () if placement.unprivileged else (
        "CHOWN", "DAC_OVERRIDE", "SETUID", "SETGID", "NET_BIND_SERVICE")
    # Squid's reconfigure re-reads the config and the pages; the addresses never change
    # with the policy (they are the placement's), so it needs no restart.
    # Squid makes its IPC queues in shared memory, named after its service, and removes
    # them only when it finishes its shutdown, which a stop does not wait for.
    spec = ProcessSpec(f"squid-{role}", argv, (ready,), stdout, stderr,
                       stop_signal=signal.SIGINT, stop_grace=SHUTDOWN_GRACE, role=role,
                       capabilities=capabilities, reads=reads,
                       reload=Reload(signal=signal.SIGHUP),
                       leaves=(f"/dev/shm/{service_name(placement, role)}-*",))
    return spec, logs


def _with_mark(text: str, policy: Policy, role: str, directory: Path,
               owner: str | None) -> tuple[str, FileSpec]:
    """The config with its marker log, and the marker (see CONFIG_MARK). It is named
    after the policy and role the config renders: the placement, the rest of what the
    config depends on, stays the same for a fence's life (and a cluster's form of the
    fence, which differs from its played form in addresses only, keeps the same name).
    Like the pages, Squid reaches it through its working directory."""
    digest = hashlib.sha256(f"{role}\0{policy!r}".encode()).hexdigest()[:20]
    name = f"{CONFIG_MARK}{digest}"
    line = f"access_log stdio:/proc/self/cwd/{name} netfence !all\n"
    return text + line, FileSpec(directory / name, "", owner=owner)


def _config_mark(conf: str) -> str | None:
    """The marker a generated config names (its last line)."""
    last = conf.rstrip("\n").rpartition("\n")[2]
    _, found, rest = last.partition(f"stdio:/proc/self/cwd/{CONFIG_MARK}")
    return CONFIG_MARK + rest.partition(" ")[0] if found else None


def _log_tail(path: Path, whole: bool = False) -> str:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0 if whole else max(0, size - _LOG_TAIL))
            return fh.read().decode(errors="replace")
    except OSError:
        return ""


def serves(log: str, mark: str, listeners: int) -> bool:
    """Whether the Squid writing this cache.log serves the config that names `mark`: it
    opened that marker when it last (re)configured, and it listens again since."""
    at = log.rfind(f"{_OPENING}/proc/self/cwd/{mark}\n")
    if at < 0:
        return False
    since = log[at:]
    if _RECONFIGURING in since:
        return False  # reconfigured again since (with another config, or this one's
        # marker would come later)
    return len(_LISTENING.findall(since)) >= listeners


class SquidProxy(NetworkProxy):
    name = "squid"
    listens_in_netns = False
    takes_sockets = True

    def setup(self, policy: Policy, placement: Placement) -> ProxySetup:
        state = placement.state_dir
        files: list[FileSpec] = []
        processes: list[ProcessSpec] = []
        roles: list[tuple[str, str, Endpoint]] = [
            ("egress", render_egress(policy, placement), placement.egress_listen)
        ]
        if placement.ingress_listen is not None:
            roles.append(
                ("ingress", render_ingress(policy, placement), placement.ingress_listen)
            )
        for role, text, ready in roles:
            conf = state / f"squid-{role}.conf"
            pages = state / f"squid-{role}-errors"
            rules = [r for r, _ in address_acls(policy)] if role == "egress" else []
            page_files = error_pages(pages, ingress=role == "ingress", rules=rules,
                                     owner=_owner(placement))
            text, mark = _with_mark(text, policy, role, pages, _owner(placement))
            reads = (conf, mark.path, *(f.path for f in page_files))
            process, logs = _process(placement, role, conf, pages, ready, reads)
            files += [FileSpec(conf, text), mark, *page_files, *logs]
            processes.append(process)
        return ProxySetup(
            files=tuple(files),
            processes=tuple(processes),
            env=proxy_env(placement.workload_proxy),
            decision_logs=(processes[0].stdout,),  # the egress access log
        )

    def settled(self, setup: ProxySetup) -> bool:
        """Whether each Squid of the setup serves its config: it has reconfigured with
        it (its cache.log names the config's marker) and listens again since. Reads the
        end of each cache.log (all of it only when the marker is further back); a Squid
        that failed on the config never settles."""
        confs = {f.path: f.content for f in setup.files}
        for process in setup.processes:
            if not process.reads or process.reads[0] not in confs:
                continue  # not one of ours (a setup may hold dnsmasq's too)
            mark = _config_mark(confs[process.reads[0]])
            if mark is None:
                continue
            log = _log_tail(process.stderr)
            if mark not in log:  # configured long ago: look further back, once
                log = _log_tail(process.stderr, whole=True)
            if not serves(log, mark, len(process.ready)):
                return False
        return True

    def validate_command(self, setup: ProxySetup) -> list[tuple[str, ...]]:
        confs = [f.path for f in setup.files
                 if f.path.name.startswith("squid-") and f.path.suffix == ".conf"]
        return [("squid", "-k", "parse", "-f", str(c)) for c in confs]

    def parse_decision(self, line: str) -> DecisionRecord | None:
        fields = line.split()
        if len(fields) != 11 or fields[0] != LOG_FORMAT_TAG:
            return None
        _, time, method, host, port, status, err, upstream, up, down, ms = fields
        if method == "-":
            return None  # a connection that closed before sending a request: no decision
        try:
            reason = reason_for_page(err)
            number = None if port == "-" else int(port)
            address = rule_network(err)
            return DecisionRecord(
                time=time,
                method=method,
                host=_log_host(host),
                port=number,
                allowed=reason is Reason.ALLOWED,
                reason=reason.value,
                status=int(status),
                upstream_ip=None if upstream == "-" else upstream,
                bytes_up=_count(up),
                bytes_down=_count(down),
                duration_ms=_count(ms),
                address=address,
                remedy=remedy_text(reason, _log_host(host), "-" if number is None else number,
                                   address),
            )
        except ValueError:
            return None


def reason_for_page(err_code: str) -> Reason:
    """The policy reason behind a logged error page; upstream failures were allowed."""
    err_code = err_code.partition(_RULE_SEP)[0]
    if err_code in _PAGE_REASONS:
        return _PAGE_REASONS[err_code]
    if err_code in _INVALID_PAGES:
        return Reason.INVALID_HOST
    if err_code == "ERR_ACCESS_DENIED":  # the final `deny all`: nothing allowed it
        return Reason.NOT_ALLOWLISTED
    return Reason.ALLOWED


def _log_host(text: str) -> str:
    """%>rd percent-encodes IPv6 brackets (%5B::1%5D); the record holds the bare host."""
    if text == "-":
        return ""
    host = unquote(text)
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _count(text: str) -> int:
    return 0 if text == "-" else max(0, int(text))
