"""Secret references in the state file: ``env:NAME``, ``credential:NAME`` and ``file:PATH``.

The state file is meant to be committed and shared, so it names where each secret lives instead of
holding it. Errors name the reference (and the file it points at), never a value: they are printed
by ``watchkeeper validate`` and logged on reload.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import unquote_plus, urlsplit, urlunsplit

KINDS = ("env", "credential", "file")
MASK = "***"


class SecretRefError(ValueError):
    """A reference that cannot be resolved; the message names the reference, never a value."""


def resolve(value: str, *, environ: Mapping[str, str], base_dir: Path) -> str:
    """The secret a reference points at; a string that is not a reference is a literal.

    ``credential:`` reads systemd's ``$CREDENTIALS_DIRECTORY`` (LoadCredential=); ``file:`` is
    relative to ``base_dir`` (the state file's folder). One trailing newline is dropped from files,
    because editors and ``echo`` add one.
    """
    kind, sep, name = value.partition(":")
    if not sep or kind not in KINDS:
        return value
    if not name:
        raise SecretRefError(f"{kind}: names nothing (write {kind}:NAME)")
    if kind == "env":
        text = environ.get(name)
        if text is None:
            raise SecretRefError(f"{value} is not set")
    elif kind == "credential":
        text = _read(_credential_path(value, name, environ), value)
    else:
        text = _read(base_dir / name, value)
    if not text:
        raise SecretRefError(f"{value} is empty")
    return text


def _credential_path(ref: str, name: str, environ: Mapping[str, str]) -> Path:
    if "/" in name or name in (".", ".."):
        raise SecretRefError(f"{ref}: a credential name is a file name, without '/'")
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise SecretRefError(
            f"{ref} needs $CREDENTIALS_DIRECTORY (set by systemd for LoadCredential=), which is not set"
        )
    return Path(directory) / name


def _read(path: Path, ref: str) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecretRefError(f"{ref}: cannot read {path} ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretRefError(f"{ref}: {path} is not UTF-8 text") from None
    return text[:-2] if text.endswith("\r\n") else text.removesuffix("\n")


def url_secrets(url: str) -> frozenset[str]:
    """The parts of a notify_url that can authenticate a callback: every query value (as written
    and decoded; a bare ``?key`` counts as a value) and a ``user:password@`` password."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return frozenset({url})
    found = {password} if password else set()
    for pair in parts.query.split("&"):
        name, sep, value = pair.partition("=")
        raw = value if sep else name
        found |= {raw, unquote_plus(raw)}
    return frozenset(v for v in found if v)


def mask_url(url: str) -> str:
    """The notify_url with what ``url_secrets`` finds replaced by ``***`` (each query value, a bare
    ``?key``, a password), the rest as written so that an operator still recognises the URL. This is
    the form the store keeps: a URL that does not parse is masked whole."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return MASK
    netloc = parts.netloc
    if password:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = "&".join(_mask_pair(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _mask_pair(pair: str) -> str:
    name, sep, value = pair.partition("=")
    if sep:
        return f"{name}={MASK if value else ''}"
    return MASK if name else ""
