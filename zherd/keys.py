"""CURVE key pairs, one per server, as ZeroMQ certificate files in `[security] keys_dir`.

`NAME.key` holds a server's public key: a plain file an operator copies to the hosts
of its neighbors. `NAME.key_secret` holds both keys and stays on the server's own
host, mode 0600. The format is pyzmq's (`zmq.auth.create_certificates`), so either
tool reads the other's files. A key is never overwritten: a new file is written
aside and linked into place, which fails if one is already there.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from zmq.utils import z85

from zherd.config import ConfigError, Topology

PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"
_HEADER = """#   ****  Generated on {now} by zherd  ****
#   ZeroMQ CURVE {kind} Certificate of server {name}
#   {advice}

metadata
    server = "{name}"
curve
    public-key = "{public}"
"""
_PUBLIC_ADVICE = "Copy it to the hosts of this server's neighbors."
_SECRET_ADVICE = "DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its permissions."


class KeyFileError(ConfigError):
    """A key that cannot be used; the message names the file and is meant for the operator."""


@dataclass(frozen=True)
class BusKeys:
    """What one server needs to speak CURVE on the bus: its own pair and its neighbors'
    public keys (z85 text, as ZeroMQ takes them)."""

    public: bytes
    secret: bytes
    neighbors: Mapping[str, bytes]
    known: Mapping[bytes, str] = field(default_factory=dict)  # any herd key we could read


def public_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{name}{PUBLIC_SUFFIX}"


def secret_path(keys_dir: Path, name: str) -> Path:
    return keys_dir / f"{name}{SECRET_SUFFIX}"


def create(keys_dir: Path, name: str) -> bool:
    """Make `name`'s key pair unless it has one; True if anything was written.

    A secret key alone gets its public file back; a public key alone is an error
    (the secret belongs to another host, or was lost: never silently replaced).
    """
    public, secret = public_path(keys_dir, name), secret_path(keys_dir, name)
    if secret.exists():
        if public.exists():
            return False
        pub, _ = load_secret(keys_dir, name)
        return _write(public, _certificate(name, pub, None), 0o644)
    if public.exists():
        raise KeyFileError(
            f"{public} exists but {secret} does not: copy {name}'s secret key here "
            f"(it runs on this host), or remove {public.name} to make a new pair"
        )
    keys_dir.mkdir(parents=True, exist_ok=True)
    pub, sec = zmq.curve_keypair()
    written = _write(secret, _certificate(name, pub, sec), 0o600)
    if written:
        _write(public, _certificate(name, pub, None), 0o644)
    return written


def ensure(keys_dir: Path, names: Iterable[str]) -> list[str]:
    """Create the missing key pairs of `names`; the servers that got new keys."""
    try:
        return [name for name in names if create(keys_dir, name)]
    except OSError as e:
        raise KeyFileError(f"{e.filename or keys_dir}: cannot write a key: {e.strerror}") from None


def load_public(keys_dir: Path, name: str) -> bytes:
    public, _ = _read(public_path(keys_dir, name))
    return public


def load_secret(keys_dir: Path, name: str) -> tuple[bytes, bytes]:
    path = secret_path(keys_dir, name)
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0  # _read says why
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: a secret key others can read (mode {stat.S_IMODE(mode):04o}); "
            f"chmod 600 it, or make a new pair if it may have leaked"
        )
    public, secret = _read(path)
    if secret is None:
        raise KeyFileError(f"{path}: no secret-key in it")
    return public, secret


def for_server(topology: Topology, name: str) -> BusKeys | None:
    """The keys `name` runs with (None when `[security] curve = false`): its secret key
    and each neighbor's public key, every one of which must be readable."""
    security = topology.security
    if not security.curve:
        return None
    folder = security.keys_dir
    public, secret = load_secret(folder, name)
    neighbors = {n: load_public(folder, n) for n in topology.neighbors(name)}
    known = {public: name} | {key: n for n, key in neighbors.items()}
    for other in topology.servers:  # non-neighbors' keys, only to name them in log lines
        if other not in known.values():
            with contextlib.suppress(KeyFileError):
                known.setdefault(load_public(folder, other), other)
    return BusKeys(public, secret, neighbors, known)


def _read(path: Path) -> tuple[bytes, bytes | None]:
    """(public, secret or None) from a certificate file; KeyFileError naming the file."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(
            f"{path}: no such key (`zherd keys` makes them; a neighbor's public key is "
            f"copied from its host)"
        ) from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read: {e.strerror}") from None
    found: dict[bytes, bytes] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(b"=")
        if sep and key.strip() in (b"public-key", b"secret-key"):
            found[key.strip()] = value.strip(b" \t'\"")
    public, secret = found.get(b"public-key"), found.get(b"secret-key")
    if public is None:
        raise KeyFileError(f"{path}: no public-key in it")
    for what, key in (("public", public), ("secret", secret)):
        if key is not None and not _valid(key):
            raise KeyFileError(f"{path}: the {what} key is not 40 characters of Z85")
    return public, secret


def _valid(key: bytes) -> bool:
    if len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError):  # z85.decode indexes a table with each byte
        return False


def _certificate(name: str, public: bytes, secret: bytes | None) -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    kind, advice = ("Secret", _SECRET_ADVICE) if secret else ("Public", _PUBLIC_ADVICE)
    text = _HEADER.format(now=now, kind=kind, advice=advice, name=name, public=public.decode())
    return text + (f'    secret-key = "{secret.decode()}"\n' if secret else "")


def _write(path: Path, text: str, mode: int) -> bool:
    """Write a new file at `path` with `mode`, all at once; False if one is already there."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)  # whatever the umask
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic, and never replaces an existing key
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True
