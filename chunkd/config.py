"""
chunkd's configuration: one YAML file, validated once at the edge, then trusted.

Every setting is a field of a frozen dataclass below; the dataclasses *are*
the schema.  A field's C{metadata["kind"]} says how its YAML value is parsed
(a size such as C{"10GiB"}, a duration such as C{"15m"}, an endpoint string).
Anything the file gets wrong -- an unknown key, a wrong type, a bad endpoint,
an unwritable directory -- raises L{ConfigError} naming the key, so the daemon
can stop with one clear line instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Mapping, Optional

import yaml


class ConfigError(Exception):
    """
    The configuration is unusable.  C{str(error)} is a single line that names
    the offending key, fit to show a sysadmin.
    """

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


def _size(default: int, doc: str) -> Any:
    return field(default=default, metadata={"kind": "size", "doc": doc})


def _duration(default: float, doc: str) -> Any:
    return field(default=default, metadata={"kind": "duration", "doc": doc})


def _plain(default: Any, doc: str, kind: str = "") -> Any:
    if isinstance(default, (list, tuple)):
        return field(
            default_factory=lambda: tuple(default), metadata={"kind": kind or "list", "doc": doc}
        )
    return field(default=default, metadata={"kind": kind, "doc": doc})


@dataclass(frozen=True)
class StorageConfig:
    directory: str = _plain("./chunkd-data", "where uploads and their records live")
    durable: bool = _plain(
        True, "fdatasync data before an offset is recorded (turn off only for tests)"
    )
    checkpoint_every: int = _size(
        64 * 1024 * 1024, "record a long tus PATCH's offset every this many bytes; 0 = at its end"
    )


@dataclass(frozen=True)
class TusConfig:
    enabled: bool = _plain(True, "serve tus 1.0.0")
    path: str = _plain("/files/", "where tus uploads are mounted")
    relative_location: bool = _plain(
        False, "answer creation with a relative Location instead of an absolute one"
    )
    download: bool = _plain(True, "allow GET of a finished upload")


@dataclass(frozen=True)
class ResumableConfig:
    enabled: bool = _plain(True, "serve the Resumable.js chunk protocol")
    path: str = _plain("/resumable", "where Resumable.js uploads are mounted")
    file_field: str = _plain("file", "name of the multipart part holding the chunk")
    max_chunks: int = _plain(100000, "most chunks one upload may have")


@dataclass(frozen=True)
class FlowConfig:
    enabled: bool = _plain(True, "serve flow.js's dialect of the chunk protocol")
    path: str = _plain("/flow", "where flow.js uploads are mounted")
    file_field: str = _plain("file", "name of the multipart part holding the chunk")
    max_chunks: int = _plain(100000, "most chunks one upload may have")


@dataclass(frozen=True)
class IetfConfig:
    enabled: bool = _plain(True, "serve Resumable Uploads for HTTP (the IETF draft, interop 3-8)")
    path: str = _plain(
        "/rufh", "its own mount (newest version without a header); the tus mount serves it too "
        "for requests that name an interop version"
    )
    min_size: int = _size(0, "announced min-size: smaller uploads are refused; 0 = none")
    max_append_size: int = _size(0, "announced max-append-size: larger request bodies get 413; 0 = none")
    min_append_size: int = _size(0, "announced min-append-size (announced only); 0 = none")
    progress_interval: float = _duration(
        1.0, "least time between two 104 progress responses while a body streams"
    )


@dataclass(frozen=True)
class CompleteConfig:
    directory: str = _plain(
        "", "where finished chunk-protocol uploads go; empty = <storage>/complete"
    )


@dataclass(frozen=True)
class UploadsConfig:
    enabled: bool = _plain(True, "serve the chunked-upload facade")
    path: str = _plain("/uploads", "where the facade is mounted")
    max_chunk_size: int = _size(
        2 * 1024 * 1024, "largest PATCH body (the chunk's bytes in a multipart body); 0 = no limit"
    )
    token_secret: str = _plain(
        "", "shared secret for finalize tokens an application mints (HMAC-SHA256); empty = off"
    )
    token_ttl: float = _duration(
        0.0, "how long a token chunkd issues at creation stays valid; 0 = as long as the upload"
    )
    issue_tokens: bool = _plain(
        True, "answer creation with a per-upload finalize token (the Upload-Token header)"
    )
    patch_requires_token: bool = _plain(
        False, "PATCH and HEAD need the upload's token too (X-Upload-Token)"
    )
    min_free_space: int = _size(0, "/health fails below this much free space; 0 = no floor")


@dataclass(frozen=True)
class UiConfig:
    enabled: bool = _plain(
        True, "serve the upload page (a browser client of tus and Resumable.js); turn off on a "
        "public server whose uploads come only from your own application"
    )
    path: str = _plain("/", "where the page is served (its script, styles and JSON under <path>/_ui/)")
    chunk_size: int = _size(
        8 * 1024 * 1024, "bytes per tus PATCH and per Resumable.js chunk the page sends"
    )


@dataclass(frozen=True)
class LimitsConfig:
    max_size: int = _size(0, "bytes per upload; 0 = unlimited")
    max_metadata_size: int = _size(4096, "bytes of Upload-Metadata per upload")
    max_concat_parts: int = _plain(1000, "partial uploads one final upload may name")
    max_active_uploads: int = _plain(
        0, "unfinished uploads one subject (auth) may have at once; 0 = no limit"
    )


@dataclass(frozen=True)
class NetworkConfig:
    idle_timeout: float = _duration(60.0, "close a connection idle this long")
    trust_proxy: bool = _plain(
        False,
        "build URLs, and count clients, from Forwarded / X-Forwarded-* headers (behind a proxy)",
    )
    shutdown_grace: float = _duration(
        10.0, "on stop, how long in-flight request bodies may take to finish"
    )
    max_header_size: int = _size(
        16 * 1024, "longest request line plus headers: 414 / 431 beyond"
    )
    header_timeout: float = _duration(
        10.0, "a request head must be complete this long after its first byte (408); 0 = no limit"
    )
    min_rate: int = _size(
        1024, "bytes per second a request body must average over min_rate_window; 0 = no floor"
    )
    min_rate_window: float = _duration(
        30.0, "the window min_rate is measured over (time chunkd paused the body not counted)"
    )
    send_timeout: float = _duration(
        60.0, "cut a connection whose client has taken none of its response this long; 0 = never"
    )
    max_connections: int = _plain(1024, "open connections at most; more are closed at accept; 0 = no limit")
    max_connections_per_client: int = _plain(
        128, "open connections per client address (requests in progress under trust_proxy); 0 = no limit"
    )


@dataclass(frozen=True)
class CorsConfig:
    allowed_origins: tuple = _plain([], "origins allowed by CORS; '*' allows any")
    max_age: float = _duration(86400.0, "how long browsers may cache a preflight")


@dataclass(frozen=True)
class DiskConfig:
    threads: int = _plain(4, "threads doing disk writes")
    high_water: int = _size(4 * 1024 * 1024, "pause a socket with this much unwritten")
    low_water: int = _size(1024 * 1024, "resume it once the queue drains to this")
    min_batch: int = _size(512 * 1024, "gather this much of a body before each write")
    read_size: int = _size(256 * 1024, "socket read size while receiving a large body")
    max_buffered: int = _size(
        256 * 1024 * 1024, "bytes waiting for the disk across all uploads before every socket pauses; 0 = no limit"
    )


@dataclass(frozen=True)
class JanitorConfig:
    interval: float = _duration(60.0, "how often the janitor sweeps")
    expire_after: float = _duration(
        86400.0, "an incomplete upload idle this long expires"
    )
    tombstone_ttl: float = _duration(
        7 * 86400.0, "how long a terminated or expired upload still answers 410"
    )
    keep_completed: float = _duration(0.0, "delete completed uploads this old; 0 = keep")
    orphan_after: float = _duration(
        3600.0, "remove files without a record (or records without data) this old"
    )


@dataclass(frozen=True)
class HookEndpoint:
    url: str = _plain("", "where events are POSTed (http or https)")
    secret: str = _plain("", "HMAC-SHA256 key for the Chunkd-Signature header")
    events: tuple = _plain(
        ["post-create", "post-finish", "post-terminate", "post-expire"], "which events to send"
    )


@dataclass(frozen=True)
class HooksConfig:
    endpoints: tuple = field(
        default_factory=tuple, metadata={"kind": "records", "item": HookEndpoint, "doc": "receivers"}
    )
    timeout: float = _duration(10.0, "longest wait for a receiver's answer")
    max_backoff: float = _duration(600.0, "longest wait between retries of an event")


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = _plain(True, "serve Prometheus metrics")
    path: str = _plain("/metrics", "where the metrics are served")
    token: str = _plain("", "bearer token the metrics need; empty = open to anyone who can connect")


@dataclass(frozen=True)
class AdminConfig:
    enabled: bool = _plain(True, "serve the operator's live view and its JSON API")
    path: str = _plain("/_admin/", "where the live view is mounted (the JSON API under <path>/api/)")
    token: str = _plain(
        "", "bearer token (or login-form password) that opens the view from addresses other than "
        "loopback; empty = loopback only"
    )


@dataclass(frozen=True)
class JwtConfig:
    secret: str = _plain("", "HS256/HS384/HS512 shared secret; empty = no HMAC tokens")
    public_key: str = _plain("", "path to a PEM public key (RS256, ES256, EdDSA); empty = none")
    audience: str = _plain("", "when set, a token's aud must name it")
    issuer: str = _plain("", "when set, a token's iss must be it")
    leeway: float = _duration(30.0, "clock skew allowed on exp, nbf and iat")


@dataclass(frozen=True)
class AuthConfig:
    required: bool = _plain(False, "every upload request of every protocol needs a valid token")
    tokens: dict = field(
        default_factory=dict,
        metadata={"kind": "mapping", "doc": "static bearer tokens -> the subject each stands for"},
    )
    jwt: JwtConfig = field(default_factory=JwtConfig)


@dataclass(frozen=True)
class Config:
    listen: tuple = _plain(
        ["tcp:port=8080:interface=127.0.0.1"],
        "Twisted server endpoints (one, or a list: e.g. ssl: on the public address and tcp: "
        "on loopback)",
        "endpoints",
    )
    storage: StorageConfig = field(default_factory=StorageConfig)
    tus: TusConfig = field(default_factory=TusConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    cors: CorsConfig = field(default_factory=CorsConfig)
    disk: DiskConfig = field(default_factory=DiskConfig)
    log_level: str = _plain("info", "debug, info, warn or error", "log_level")
    janitor: JanitorConfig = field(default_factory=JanitorConfig)
    hooks: HooksConfig = field(default_factory=HooksConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    admin: AdminConfig = field(default_factory=AdminConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    resumable: ResumableConfig = field(default_factory=ResumableConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    ietf: IetfConfig = field(default_factory=IetfConfig)
    complete: CompleteConfig = field(default_factory=CompleteConfig)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    ui: UiConfig = field(default_factory=UiConfig)

    @property
    def completeDirectory(self) -> str:
        """
        The completed-files area, absolute: C{complete.directory}, or
        C{<storage>/complete} (the one place that default is decided).
        """
        configured = self.complete.directory
        return os.path.abspath(configured or os.path.join(self.storage.directory, "complete"))


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
HOOK_EVENTS = ("pre-create", "post-create", "post-finish", "post-terminate", "post-expire")
LOG_LEVELS = ("debug", "info", "warn", "error")
_NUMBER_WITH_UNIT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parseSize(value: object) -> int:
    """
    Parse a byte count: an integer, or a number with a unit (C{"10GiB"},
    C{"512 MB"}).

    @raise ValueError: with a reason when C{value} is not a size.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 1048576 or '10GiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _NUMBER_WITH_UNIT.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 1048576 or '10GiB', got {value!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parseDuration(value: object) -> float:
    """
    Parse a duration in seconds: a number, or a number with a unit
    (C{"90s"}, C{"15m"}, C{"24h"}, C{"7d"}).

    @raise ValueError: with a reason when C{value} is not a duration.
    """
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 60 or '15m'")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    match = _NUMBER_WITH_UNIT.match(str(value))
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"expected a duration such as 60 or '15m', got {value!r}")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def _checkEndpoint(value: str) -> str:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    try:
        serverFromString(reactor, value)
    except Exception as e:  # serverFromString raises a zoo of types
        if value.startswith("systemd:"):
            raise ValueError(
                "no such socket inherited from systemd (are LISTEN_FDS and LISTEN_FDNAMES set? "
                "start chunkd through chunkd.socket)"
            ) from None
        raise ValueError(f"not a Twisted server endpoint ({e})") from None
    return value


def _convert(key: str, f: dataclasses.Field, value: object) -> object:
    kind = f.metadata.get("kind", "")
    try:
        if kind == "size":
            return parseSize(value)
        if kind == "duration":
            return parseDuration(value)
        if kind == "records":
            if not isinstance(value, list):
                raise ValueError("expected a list of mappings")
            return tuple(_build(f.metadata["item"], item, f"{key}[{i}].") for i, item in enumerate(value))
        if kind == "endpoints":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
                raise ValueError("expected an endpoint or a non-empty list of endpoints")
            if len(set(value)) != len(value):
                raise ValueError("the same endpoint is listed twice")
            return tuple(value)  # parsed by Twisted once the rest is valid: see loadConfig
        if kind == "mapping":
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in value.items()
            ):
                raise ValueError("expected a mapping of non-empty strings to non-empty strings")
            return dict(value)
        if kind == "list":
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError("expected a list of strings")
            return tuple(value)
        expected = type(f.default)
        if expected is bool:
            if not isinstance(value, bool):
                raise ValueError("expected true or false")
            return value
        if expected is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError("expected a whole number >= 0")
            return value
        if not isinstance(value, str):
            raise ValueError("expected a string")
        if kind == "log_level" and value not in LOG_LEVELS:
            raise ValueError(f"expected one of {', '.join(LOG_LEVELS)}")
        return value
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


def _build(cls: type, data: object, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(prefix.rstrip(".") or "(top level)", "expected a mapping of keys")
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}{name}"
        f = known.get(name)
        if f is None:
            raise ConfigError(key, "unknown key")
        section = f.default_factory
        if isinstance(section, type) and dataclasses.is_dataclass(section):
            kwargs[name] = _build(section, value, key + ".")
        else:
            kwargs[name] = _convert(key, f, value)
    return cls(**kwargs)


def _normalizeMount(key: str, path: str) -> str:
    if not path.startswith("/") or "?" in path or "#" in path:
        raise ConfigError(key, f"expected an absolute URL path such as /files/, got {path!r}")
    return "/" + path.strip("/")


def _checkSemantics(config: Config) -> Config:
    """
    Rules that span fields, and normalisation every consumer relies on:
    mount paths lose their trailing slash so protocols can append to them.
    """
    if config.disk.threads < 1:
        raise ConfigError("disk.threads", "at least one thread is needed")
    if config.disk.low_water >= config.disk.high_water:
        raise ConfigError("disk.low_water", "must be below disk.high_water")
    if config.disk.min_batch > config.disk.high_water:
        raise ConfigError("disk.min_batch", "must not exceed disk.high_water")
    if not 4096 <= config.disk.read_size <= 16 * 1024 * 1024:
        raise ConfigError("disk.read_size", "must be between 4KiB and 16MiB")
    for origin in config.cors.allowed_origins:
        if origin != "*" and not re.match(r"^https?://[^/\s]+$", origin):
            raise ConfigError(
                "cors.allowed_origins", f"{origin!r} is not an origin like https://example.com"
            )
    for i, hook in enumerate(config.hooks.endpoints):
        if not re.match(r"^https?://[^/\s]+", hook.url):
            raise ConfigError(f"hooks.endpoints[{i}].url", "expected an http:// or https:// URL")
        unknown = set(hook.events) - set(HOOK_EVENTS)
        if unknown:
            raise ConfigError(f"hooks.endpoints[{i}].events", f"unknown event {sorted(unknown)[0]!r}")
    _checkAuth(config)
    if config.network.max_header_size < 1024:
        raise ConfigError("network.max_header_size", "must be at least 1KiB")
    if config.network.min_rate and config.network.min_rate_window <= 0:
        raise ConfigError("network.min_rate_window", "must be more than 0 when network.min_rate is set")
    if config.janitor.interval <= 0:
        raise ConfigError("janitor.interval", "must be more than 0")
    mounts = {}
    metrics = replace(config.metrics, path=_normalizeMount("metrics.path", config.metrics.path))
    admin = replace(config.admin, path=_normalizeMount("admin.path", config.admin.path))
    if admin.enabled and admin.path == "/":
        raise ConfigError("admin.path", "the live view needs a path of its own, such as /_admin/")
    if admin.token and len(admin.token) < 16:
        raise ConfigError("admin.token", "must be at least 16 characters (it opens the view to the network)")
    for section in ("tus", "resumable", "flow", "uploads", "ietf"):
        part = getattr(config, section)
        mounts[section] = replace(part, path=_normalizeMount(f"{section}.path", part.path))
    ui = replace(config.ui, path=_normalizeMount("ui.path", config.ui.path))
    if ui.chunk_size < 1024:
        raise ConfigError("ui.chunk_size", "must be at least 1KiB")
    enabled = [m.path for m in (*mounts.values(), ui) if m.enabled]
    if admin.enabled:
        enabled.append(admin.path)
    if len(set(enabled)) != len(enabled):
        raise ConfigError("path", "two protocols are mounted at the same path")
    return replace(config, metrics=metrics, ui=ui, admin=admin, **mounts)


def _checkAuth(config: Config) -> None:
    """
    Mistakes that would refuse every token, or accept forged ones.
    """
    jwtConfig = config.auth.jwt
    if jwtConfig.secret and len(jwtConfig.secret.encode("utf-8")) < 32:
        # RFC 7518 3.2: an HMAC key as long as the hash at least.
        raise ConfigError("auth.jwt.secret", "must be at least 32 bytes (256 bits)")
    if jwtConfig.public_key:
        try:
            with open(jwtConfig.public_key, "rb") as f:
                pem = f.read()
        except OSError as e:
            raise ConfigError("auth.jwt.public_key", f"cannot read {jwtConfig.public_key}: {e.strerror}")
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        from chunkd.auth import publicKeyAlgorithms

        try:
            key = load_pem_public_key(pem)
        except (ValueError, TypeError):
            raise ConfigError("auth.jwt.public_key", f"{jwtConfig.public_key} is not a PEM public key")
        if not publicKeyAlgorithms(key):
            raise ConfigError("auth.jwt.public_key", "expected an RSA, EC or Ed25519/Ed448 public key")
    if config.auth.required and not (config.auth.tokens or jwtConfig.secret or jwtConfig.public_key):
        raise ConfigError("auth.required", "needs auth.tokens or an auth.jwt key to accept")


def loadConfig(
    path: Optional[str] = None,
    overrides: Optional[Mapping[str, object]] = None,
    beforeEndpoints: Optional[Callable[[Config], object]] = None,
) -> Config:
    """
    Read the YAML file at C{path} (or use the embedded defaults when C{None}),
    apply C{overrides} given as dotted keys (C{{"storage.directory": "/x"}}),
    and validate the result.

    @param beforeEndpoints: called with the config once everything but the
        listeners is valid, before Twisted parses those: parsing them
        imports the reactor, and chunkd decides first whether it needs TLS
        (L{chunkd.lazytls}).

    @raise ConfigError: naming the key, when anything is wrong.
    """
    data: dict = {}
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except OSError as e:
            raise ConfigError("", f"cannot read config file {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError("", f"{path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise ConfigError("", f"{path} must hold a mapping of keys")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    config = _checkSemantics(_build(Config, data, ""))
    if beforeEndpoints is not None:
        beforeEndpoints(config)
    for endpoint in config.listen:
        try:
            _checkEndpoint(endpoint)
        except ValueError as e:
            raise ConfigError("listen", str(e)) from None
    return config


def checkStorageDirectory(config: Config) -> None:
    """
    Make sure the storage directory exists and is writable, creating it if
    needed; called once at start-up.

    @raise ConfigError: naming C{storage.directory} when it cannot be used.
    """
    directory = config.storage.directory
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-probe-{os.getpid()}-{os.urandom(4).hex()}")
        with open(probe, "wb") as f:
            f.write(b"x")
        try:
            problem = _lockProblem(probe)
        finally:
            os.unlink(probe)
    except OSError as e:
        raise ConfigError(
            "storage.directory", f"{directory} is not a writable directory ({e.strerror})"
        ) from None
    if problem is not None:
        raise ConfigError("storage.directory", f"{directory}: {problem}; chunkd needs working flock "
                          "locks to keep uploads apart (deploy/README.md)")


def _lockProblem(path: str) -> Optional[str]:
    """
    Why C{flock} cannot be relied on at C{path}, or C{None}: an exclusive
    lock taken through one open file must stop a second open of the same
    file (another process or host does the same), and closing the first
    must free it.  A file system whose locks are not enforced, or always
    fail, would let two requests write one upload.
    """
    import fcntl

    first = os.open(path, os.O_RDONLY)
    second = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(first, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            return f"file locks fail here ({e.strerror})"
        try:
            fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return "file locks do not exclude here"
        os.close(first)
        first = -1
        # A network file system frees the lock a moment after the close
        # (GlusterFS: milliseconds): give it a second before concluding.
        import time

        deadline = time.monotonic() + 1.0
        while True:
            try:
                fcntl.flock(second, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return None
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return "a released file lock stays held here"
                time.sleep(0.01)
    finally:
        for fd in (first, second):
            if fd >= 0:
                os.close(fd)
