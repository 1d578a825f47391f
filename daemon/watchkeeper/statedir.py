"""The state as ``--state`` names it: one file, or a directory of them (DESIGN.md section 11).

A directory is read file by file: every ``*.toml`` that is not hidden, in name order. Each file
validates alone (its channels may name the accounts of the other files), and ``merge``, which is
pure, combines them with each file's last good version:

- a file that does not validate is replaced by its last good version (by nothing if it never
  validated), and the other files apply;
- an account or channel declared in two files, or ``[daemon]`` in two files, is an error naming
  both; the definition in force stays until one of them drops it (a new one is not applied);
- while a file has never validated, no managed channel is deleted: what it declares is unknown
  (``Policy.deletions_held``).

``Loader`` keeps the last good versions for the daemon, in memory only: they hold resolved
secrets, which never go to the database.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import TypeVar

from watchkeeper import config
from watchkeeper.config import ConfigError, ConfigIssue, DesiredState, Version
from watchkeeper.model import ChannelSpec

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
Fingerprint = tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Part:
    """One file of a directory, validated: what it contributes."""

    state: DesiredState
    """The file alone: its accounts and channels, its ``[daemon]`` settings (defaults without)."""
    daemon: bool = False
    """Whether the file has a ``[daemon]`` table."""


@dataclass(frozen=True, slots=True)
class Source:
    """One file as read now."""

    file: str
    part: Part | None
    """None: the file does not validate now."""
    issues: tuple[ConfigIssue, ...] = ()
    daemon: bool = False
    """The file has ``[daemon]``, or cannot be read well enough to tell."""


@dataclass(frozen=True, slots=True)
class Merged:
    state: DesiredState | None
    """None: nothing can be applied (the state in force, if any, stays)."""
    issues: tuple[ConfigIssue, ...] = ()
    good: Mapping[str, Part] = field(default_factory=dict)
    """Each present file's version in force: the last good versions for the next merge."""


def merge(
    directory: Path,
    sources: Sequence[Source],
    good: Mapping[str, Part],
    previous: DesiredState | None,
) -> Merged:
    """The directory's desired state, from its files now (in name order), each file's last good
    version and the state in force (``previous``, None at start)."""
    issues = [issue for source in sources for issue in source.issues]
    chosen = {source.file: source.part or good.get(source.file) for source in sources}
    in_force = {file: part for file, part in chosen.items() if part is not None}
    unknown = tuple(Path(file).name for file, part in chosen.items() if part is None)
    base, found = _daemon(sources, in_force, previous)
    issues += found
    accounts, found = _unique(
        ((name, file, spec) for file, p in in_force.items() for name, spec in p.state.accounts.items()),
        previous.accounts if previous else {},
        lambda name: ConfigIssue(f"accounts.{name}", ""),
    )
    issues += found
    channels, found = _unique(
        ((_key(c), file, c) for file, p in in_force.items() for c in p.state.channels),
        {_key(c): c for c in previous.channels} if previous else {},
        lambda key: ConfigIssue("channels", f"in account {key[0]!r}: ", key[1]),
    )
    issues += found
    issues += _orphans(in_force, channels, accounts)
    kept = tuple(c for c in channels.values() if c.account in accounts)
    if not accounts:
        what = "holds no *.toml file" if not sources else "has no valid account in any file"
        issues.append(ConfigIssue("", f"the state directory {what}", file=str(directory)))
    if base is None or not accounts:
        return Merged(None, tuple(issues), in_force)
    state = replace(
        base,
        path=directory,
        policy=replace(base.policy, deletions_held=unknown),
        accounts=MappingProxyType(accounts),
        channels=kept,
    )
    return Merged(state, tuple(issues), in_force)


def _key(channel: ChannelSpec) -> tuple[str, str]:
    return channel.account, channel.channel_id


def _daemon(
    sources: Sequence[Source], in_force: Mapping[str, Part], previous: DesiredState | None
) -> tuple[DesiredState | None, list[ConfigIssue]]:
    """The state whose ``[daemon]`` settings apply; None when they cannot be told (at start)."""
    holders = [file for file, part in in_force.items() if part.daemon]
    if len(holders) > 1:
        others = ", ".join(holders[1:])
        kept = "the settings in force stay" if previous else "the daemon cannot start"
        issue = f"[daemon] is also in {others}; it may be in one file only: {kept} until then"
        return previous, [ConfigIssue("daemon", issue, file=holders[0])]
    if holders:
        return in_force[holders[0]].state, []
    doubtful = [s.file for s in sources if s.daemon and s.file not in in_force]
    if doubtful:  # the [daemon] settings (the database!) may be in a file that does not validate
        if previous is not None:
            return previous, []
        issue = "may hold [daemon] and does not validate: the daemon settings are unknown"
        return None, [ConfigIssue("daemon", issue, file=file) for file in doubtful]
    return next((part.state for part in in_force.values()), None), []


def _unique(
    declared: Iterable[tuple[K, str, V]],
    previous: Mapping[K, V],
    describe: Callable[[K], ConfigIssue],
) -> tuple[dict[K, V], list[ConfigIssue]]:
    """Each key declared in one file only; one declared in several keeps its ``previous`` value
    (or is left out), with an issue naming the files."""
    files: dict[K, list[str]] = {}
    values: dict[K, V] = {}
    for key, file, value in declared:
        files.setdefault(key, []).append(file)
        values.setdefault(key, value)
    issues = []
    for key, where in files.items():
        if len(where) == 1:
            continue
        kept = "the definition in force stays" if key in previous else "it is not applied"
        issue = describe(key)
        also = ", ".join(where[1:])
        message = f"{issue.message}also declared in {also}; {kept} until only one file declares it"
        issues.append(replace(issue, message=message, file=where[0]))
        if key in previous:
            values[key] = previous[key]
        else:
            del values[key]
    return values, issues


def _orphans(
    in_force: Mapping[str, Part],
    channels: Mapping[tuple[str, str], ChannelSpec],
    accounts: Mapping[str, object],
) -> list[ConfigIssue]:
    """Channels whose account no file declares now (its file was removed, or is in conflict)."""
    return [
        ConfigIssue(
            "channels",
            f"account {c.account!r} is not in force (no file that validates declares it, or "
            "two do): not applied",
            c.channel_id,
            file=file,
        )
        for file, part in in_force.items()
        for c in part.state.channels
        if c.account not in accounts and channels.get(_key(c)) is c
    ]


# -- the edge: reading files -------------------------------------------------------------------


def is_state_file(name: str) -> bool:
    """``*.toml`` and not hidden: the temporary files of editors and of provisioning code
    (``.#x.toml``, ``x.toml~``, ``.x.toml.swp``, ``.x.toml.tmp``) never count."""
    return name.endswith(".toml") and not name.startswith(".")


def state_files(directory: Path) -> list[Path]:
    """The directory's state files, in name order (code point order, as ``LC_ALL=C ls``)."""
    with os.scandir(directory) as entries:
        names = sorted(e.name for e in entries if is_state_file(e.name) and not e.is_dir())
    return [directory / name for name in names]


def fingerprint(path: Path) -> Fingerprint:
    """What changes when the state changes: a file's identity and stamp (an atomic replace changes
    the inode), or those of every state file of a directory, by name."""
    if not path.is_dir():
        return _stamp(path)
    try:
        return tuple((p.name, *_stamp(p)) for p in state_files(path))
    except OSError:
        return ()


def _stamp(path: Path) -> tuple[int, int, int]:
    try:
        st = path.stat()
    except OSError:
        return (0, 0, 0)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def read(
    directory: Path, good: Mapping[str, Part], *, environ: Mapping[str, str]
) -> list[Source] | ConfigIssue:
    """Every state file of the directory, parsed, then validated against the accounts all of them
    declare (and the last good accounts of those that cannot be parsed now)."""
    try:
        paths = state_files(directory)
    except OSError as exc:
        return ConfigIssue("", f"cannot read the state directory ({exc.strerror})", file=str(directory))
    documents: dict[Path, dict[str, object] | ConfigIssue] = {}
    for path in paths:
        try:
            documents[path] = config.parse(path.read_bytes())
        except OSError as exc:
            documents[path] = ConfigIssue("", f"cannot read the state file ({exc.strerror})")
    namespace: dict[str, Version | None] = {}
    for path, document in reversed(documents.items()):  # the first file's version wins
        if isinstance(document, ConfigIssue):
            last = good.get(str(path))
            accounts = last.state.accounts.values() if last else ()
            namespace.update({a.name: (a.product, a.api_version) for a in accounts})
        else:
            namespace.update(config.declared(document))
    return [_source(path, doc, namespace, environ) for path, doc in documents.items()]


def _source(
    path: Path,
    document: dict[str, object] | ConfigIssue,
    namespace: dict[str, Version | None],
    environ: Mapping[str, str],
) -> Source:
    file = str(path)
    if isinstance(document, ConfigIssue):
        return Source(file, None, (replace(document, file=file),), daemon=True)
    issues, state = config.check(document, path, environ=environ, outside=namespace)
    daemon = "daemon" in document
    return Source(file, Part(state, daemon) if state else None, tuple(issues), daemon)


def load_directory(
    directory: Path,
    good: Mapping[str, Part],
    previous: DesiredState | None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Merged:
    sources = read(directory, good, environ=os.environ if environ is None else environ)
    if isinstance(sources, ConfigIssue):
        return Merged(None, (sources,), good)
    return merge(directory, sources, good, previous)


def load(path: Path, *, environ: Mapping[str, str] | None = None) -> DesiredState:
    """For the one-shot commands: the state file, or a directory whose files all validate;
    ConfigError lists every problem of every file."""
    if not path.is_dir():
        return config.load(path, environ=environ)
    merged = load_directory(path, {}, None, environ=environ)
    if merged.issues or merged.state is None:
        raise ConfigError(merged.issues)
    return merged.state


class Loader:
    """What the daemon loads: the state file, or the directory with each file's last good version
    kept from one load to the next."""

    def __init__(self, path: Path, *, environ: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.environ = environ
        self.good: Mapping[str, Part] = {}

    def load(self, previous: DesiredState | None) -> Merged:
        if not self.path.is_dir():
            try:
                return Merged(config.load(self.path, environ=self.environ))
            except ConfigError as exc:
                return Merged(None, exc.issues)
        merged = load_directory(self.path, self.good, previous, environ=self.environ)
        self.good = merged.good
        return merged
