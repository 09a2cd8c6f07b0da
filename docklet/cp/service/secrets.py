"""Secrets: values the CP keeps encrypted, and hands only to the node that runs them.

`docklet secret set NAME` makes a new version of a secret. Each version is sealed with
AES-GCM under the CP's 256-bit key, with a random 96-bit nonce, and its name and version
as associated data (a ciphertext moved to another name or version does not open). The
key is DOCKLET_SECRET_KEY (base64) when set, else `<data dir>/secret.key` (0600), made
at the first `secret set`. A spec refers to a secret by name; sync writes the version it
uses into the revision, so a new value is a new revision that rolls out, and rolling back
returns the old version. Values are opened only for a lease answer (`values`).

`rotate_key` re-seals every version under a new key: the new key is written beside the
old one first, the database re-sealed in one transaction, then the file swapped, so a
crash at any point leaves one key that opens everything (`_load_file` finishes a swap
that was interrupted).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from docklet.common import defaults, logs
from docklet.common.errors import (
    BadRequest,
    Conflict,
    InvalidSpec,
    NotFound,
    SecretKeyError,
    TooLarge,
)
from docklet.common.status import EventKind
from docklet.cp.service.passes import Passes
from docklet.cp.settings import CPConfig
from docklet.cp.store import events, secret_values
from docklet.cp.store.db import Store

log = logging.getLogger(__name__)

KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96 bits, GCM's own size
_NAME = re.compile(defaults.SECRET_NAME_PATTERN)

Seal = tuple[bytes, bytes]  # (nonce, ciphertext with its tag)


def check_name(name: Any) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        shown = repr(name)[:80]
        raise BadRequest(
            f"secret name {shown} is not valid: use a-z, 0-9, '.', '_' and '-', starting with"
            " a letter or digit, at most 63 characters"
        )
    return name


def check_value(value: Any) -> str:
    if not isinstance(value, str):
        raise BadRequest('the body is {"value": "..."}: the secret\'s value as a JSON string')
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > defaults.SECRET_VALUE_MAX:
        raise TooLarge(
            f"a secret's value is at most {defaults.SECRET_VALUE_MAX} bytes; this one is {size}"
        )
    if "\x00" in value:
        raise BadRequest("a secret's value may not contain a NUL character (\\0)")
    try:
        value.encode("utf-8")
    except UnicodeError:
        raise BadRequest("a secret's value must be UTF-8 text") from None
    return value


# -- the key ------------------------------------------------------------------------


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_BYTES:
        raise SecretKeyError(
            f"{where} is not a secret key: expected {KEY_BYTES} random bytes in base64"
            " (e.g. `head -c 32 /dev/urandom | base64`)"
        )
    return key


def key_check(key: bytes) -> str:
    """What the database keeps to know which key sealed its values: a keyed hash."""
    return hmac.new(key, b"docklet secret key check", hashlib.sha256).hexdigest()[:32]


def write_key(path: Path, key: bytes) -> None:
    """A new key file, 0600 from its first byte, fsynced; refused if one is there."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, base64.b64encode(key) + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Vault:
    """Seals and opens values under the CP's key, read when first needed.

    A key file replaced under a running CP (`docklet-cp secrets rotate-key`) is
    read again: the key is cached with the file's identity.
    """

    def __init__(self, store: Store, config: CPConfig) -> None:
        self.store, self.config = store, config
        self._lock = threading.Lock()
        self._cached: tuple[Any, bytes] | None = None  # (file identity, key)

    def key(self, *, create: bool = False) -> bytes:
        """The key; `create`: make the key file when there is none and no value is stored."""
        given = os.environ.get(defaults.SECRET_KEY_ENV)
        if given:
            key = _decode_key(given, defaults.SECRET_KEY_ENV)
            self._check(key)
            return key
        with self._lock:
            key = self._from_file(create)
        try:
            self._check(key)
        except SecretKeyError:
            # A rotation may have committed a moment ago and not renamed its file yet:
            # read again (finish_swap takes its file if the database says it is the key).
            with self._lock:
                self._cached = None
                key = self._from_file(create=False)
            self._check(key)
        return key

    def _from_file(self, create: bool) -> bytes:
        path = self.config.secret_key_path
        finish_swap(self.store, path)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return self._new_file(path, create)
        identity = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        if self._cached and self._cached[0] == identity:
            return self._cached[1]
        if stat.st_mode & 0o077:
            log.warning("secrets: %s is readable by others than its owner: chmod 600 it", path)
        key = _decode_key(path.read_text(errors="replace"), str(path))
        self._cached = (identity, key)
        return key

    def _new_file(self, path: Path, create: bool) -> bytes:
        if secret_values.count(self.store.reader()) or not create:
            raise SecretKeyError(
                f"the secret key is missing: no {path} and no {defaults.SECRET_KEY_ENV};"
                " restore the key the secrets were sealed with"
            )
        try:
            write_key(path, os.urandom(KEY_BYTES))
            log.info("secrets: made a new key in %s (back it up with the data dir)", path)
        except FileExistsError:
            pass  # another thread or process made it first: use theirs
        return self._from_file(create=False)

    def _check(self, key: bytes) -> None:
        """Refuse a key other than the one that sealed the stored values, before using it."""
        stored = secret_values.key_check(self.store.reader())
        if stored is None:
            with self.store.write() as db:
                if secret_values.key_check(db) is None:
                    secret_values.set_key_check(db, key_check(key))
                    return
                stored = secret_values.key_check(db)
        if stored != key_check(key):
            raise SecretKeyError(
                "the secret key (DOCKLET_SECRET_KEY or secret.key in the data dir) is not the"
                " one the stored secrets were sealed with; restore that key"
            )

    def open(self, name: str, version: int, sealed: Seal) -> str:
        value = open_with(self.key(), name, version, sealed)
        logs.hide(value)  # no log line of this process shows it, whoever logs it
        return value


def _aad(name: str, version: int) -> bytes:
    return f"docklet-secret:{name}:{version}".encode()


def seal_with(key: bytes, name: str, version: int, value: str) -> Seal:
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, value.encode("utf-8"), _aad(name, version))


def open_with(key: bytes, name: str, version: int, sealed: Seal) -> str:
    nonce, ciphertext = sealed
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, _aad(name, version)).decode("utf-8")
    except (InvalidTag, ValueError):
        raise SecretKeyError(
            f"secret {name} v{version} does not open with this key: not the key it was sealed"
            " with, or the stored value was altered"
        ) from None


# -- rotation -------------------------------------------------------------------------


def _new_path(path: Path) -> Path:
    return path.with_name(path.name + ".new")


def finish_swap(store: Store, path: Path) -> None:
    """A rotation that committed but did not rename its file (it died, or is about to):
    the database is sealed under the new key, so that file is the key now.

    A new file the database does not match is left alone: a rotation may be re-sealing
    right now (the next rotation clears one that was abandoned)."""
    new = _new_path(path)
    try:
        key = _decode_key(new.read_text(errors="replace"), str(new))
    except (FileNotFoundError, SecretKeyError):
        return
    if secret_values.key_check(store.reader()) == key_check(key):
        try:
            os.replace(new, path)
        except FileNotFoundError:
            return  # the rotation renamed it itself meanwhile
        log.warning("secrets: finished an interrupted key rotation (%s)", path)


def rotate_key(store: Store, config: CPConfig) -> int:
    """Re-seal every stored version under a new key, then swap the key file; how many.

    With DOCKLET_SECRET_KEY the key is not a file: the new key is written to
    `<data dir>/secret.key.new` for the operator to put in the environment.
    """
    vault = Vault(store, config)
    old = vault.key(create=True)  # none yet and no value stored: a first key, rotated at once
    new_key = os.urandom(KEY_BYTES)
    path = config.secret_key_path
    staged = _new_path(path)
    staged.unlink(missing_ok=True)
    write_key(staged, new_key)
    with store.write() as db:
        rows = secret_values.every_sealed(db)
        for row in rows:
            value = open_with(old, row["name"], row["version"], (row["nonce"], row["ciphertext"]))
            sealed = seal_with(new_key, row["name"], row["version"], value)
            secret_values.reseal(db, row["name"], row["version"], sealed)
        secret_values.set_key_check(db, key_check(new_key))
    if not os.environ.get(defaults.SECRET_KEY_ENV):
        try:
            os.replace(staged, path)
        except FileNotFoundError:  # a running CP read the key meanwhile and took the file
            if _decode_key(path.read_text(), str(path)) != new_key:
                raise
        _fsync_dir(path.parent)
    return len(rows)


# -- the service ----------------------------------------------------------------------


class Secrets:
    """The /api/secrets routes, and the values a lease carries."""

    def __init__(self, store: Store, config: CPConfig, passes: Passes | None = None) -> None:
        self.store, self.passes = store, passes
        self.vault = Vault(store, config)

    @property
    def config(self) -> CPConfig:
        return self.vault.config

    @config.setter
    def config(self, config: CPConfig) -> None:
        self.vault.config = config

    def set(self, name: str, value: Any, by: str) -> dict[str, Any]:
        """A new version of `name`; the apps that use it roll out the new version."""
        check_name(name)
        check_value(value)
        key = self.vault.key(create=True)  # a missing or wrong key: said before any write
        with self.store.write() as db:
            version = secret_values.next_version(db, name)
            if version == 1:
                self._room(db)
            sealed = seal_with(key, name, version, value)
            secret_values.add(db, name, sealed, time.time(), by)
            pruned = secret_values.prune(db, name, self.config.secret_versions_kept)
            told = f"secret {name}: version {version} set by {by}"
            events.record(db, EventKind.SECRET, told + (f", {pruned} old pruned" if pruned else ""))
        self._sync()
        used = secret_values.users(self.store.reader(), name).get(name, [])
        return {"name": name, "version": version, "apps": used}

    def _room(self, db: Any) -> None:
        if secret_values.count(db) >= defaults.SECRETS_MAX:
            raise Conflict(f"a cluster holds at most {defaults.SECRETS_MAX} secrets")

    def _sync(self) -> None:
        """Read-your-writes: the apps that use the secret have their new revision."""
        if self.passes is None:
            return
        result = self.passes.sync()
        if result is not None and result.changed:
            self.passes.reconcile(result.changed)

    def listing(self) -> list[dict[str, Any]]:
        db = self.store.reader()
        used = secret_values.users(db)
        kept = secret_values.versions(db)
        return [
            {
                "name": row["name"],
                "version": row["version"],
                "versions": kept.get(row["name"], []),
                "created_at": row["created_at"],
                "updated_at": row["updated_at"],
                "apps": used.get(row["name"], []),
            }
            for row in secret_values.listing(db)
        ]

    def remove(self, name: str, by: str) -> dict[str, Any]:
        check_name(name)
        with self.store.write() as db:
            used = secret_values.users(db, name).get(name, [])
            if used:
                raise Conflict(
                    f"secret {name!r} is used by app(s) {', '.join(used)}: remove it from their"
                    " specs first"
                )
            if not secret_values.remove(db, name):
                raise NotFound(f"no secret {name!r} (docklet secret list)")
            events.record(db, EventKind.SECRET, f"secret {name}: removed by {by}")
        self._sync()
        return {"name": name, "removed": True}

    def check_refs(self, fields: Any) -> None:
        """Refuse an API change (`run`, `update`) naming a secret that does not exist, before
        it is committed; a push of one is a sync error with its line instead (desired/sync)."""
        if not isinstance(fields, dict):
            return
        env = fields.get("env") if isinstance(fields.get("env"), dict) else {}
        named = [(f"env.{k}", v.get("secret")) for k, v in env.items() if isinstance(v, dict)]
        files = fields.get("secrets") if isinstance(fields.get("secrets"), list) else []
        named += [
            (f"secrets.{i}", f.get("name")) for i, f in enumerate(files) if isinstance(f, dict)
        ]
        kept = secret_values.versions(self.store.reader())
        missing = [
            f"{where}: secret {n!r} does not exist: docklet secret set {n}"
            for where, n in named
            if isinstance(n, str) and n not in kept
        ]
        if missing:
            raise InvalidSpec("; ".join(missing))

    def values(self, refs: list[tuple[str, int]]) -> list[dict[str, Any]]:
        """The values of these (name, version), opened for one lease answer."""
        out = []
        for name, version in dict.fromkeys(refs):
            sealed = secret_values.sealed(self.store.reader(), name, version)
            if sealed is None:
                raise NotFound(f"secret {name} v{version} is no longer kept")
            value = self.vault.open(name, version, sealed)
            out.append({"name": name, "version": version, "value": value})
        return out

    def scrub(self, task_id: int, text: str) -> str:
        """`text` (a task's error: Docker may echo its env) without the task's secret values."""
        payload = secret_values.task_refs(self.store.reader(), task_id)
        refs = task_refs(json.loads(payload)) if payload else []
        for name, version in refs:
            sealed = secret_values.sealed(self.store.reader(), name, version)
            if sealed is None:
                continue
            try:
                value = self.vault.open(name, version, sealed)
            except SecretKeyError:
                continue
            if value:
                text = text.replace(value, f"[secret {name}]")
        return text


def task_refs(payload: dict[str, Any]) -> list[tuple[str, int]]:
    """The (secret, version) a deploy task's container spec refers to."""
    refs = [
        (value["secret"], value["version"])
        for value in (payload.get("env") or {}).values()
        if isinstance(value, dict) and "secret" in value
    ]
    refs += [(f["name"], f["version"]) for f in payload.get("secrets") or []]
    return refs
