"""Discovery: where plugins come from (plugin directories, then entry points), without running their code."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib.machinery import PathFinder
from pathlib import Path

ENTRY_POINT_GROUP = "plugin_health.plugins"
_SEP = os.sep  # see head_and_tail


@dataclass(frozen=True, slots=True)
class PluginSource:
    """One place a plugin can be imported from: a file or package, or an entry point ``module:Class``."""

    name: str
    origin: str
    path: Path | None = None
    entry_point: str | None = None

    @property
    def label(self) -> str:
        """How answers and logs name the source: its file or package name, never a path (paths tell too much)."""
        return self.origin if self.path is None else label_of(str(self.path))

    @property
    def is_package(self) -> bool:
        """Whether the source is a package directory (``name/__init__.py``)."""
        return self.path is not None and self.path.name == "__init__.py"


def head_and_tail(path: str) -> tuple[str, str]:
    """A source's path as text split at its last separator: its directory and its file's name. The separator is the
    one this module saw at import, before any plugin's: in a shared runner, one that replaced ``os.sep`` would
    otherwise have the next plugins named by their whole paths (``label_of``), and its packages imported as plain
    modules, their relative imports failing (``import_source``)."""
    head, separator, tail = path.rpartition(_SEP)
    return head or separator, tail  # (a file at the root: its directory is the separator itself)


def label_of(path: str) -> str:
    """``PluginSource.label`` of the file source at ``path``, worked out from the text: its file's name, or its
    package's with a slash. A runner, sent the path as text, makes no ``Path`` of it (making one was 4% of the
    instructions of a runner's load of a trivial plugin, 21,600 of 518,000, for a class lookup that names the source
    only when it fails)."""
    head, tail = head_and_tail(path)
    return f"{head_and_tail(head)[1]}/" if tail == "__init__.py" else tail


def _skipped(name: str) -> bool:
    return name.startswith(("_", "."))


def scan_directory(directory: Path) -> list[PluginSource]:
    """The plugin modules and packages directly inside ``directory``, sorted by name."""
    found: list[PluginSource] = []
    # os.scandir, not Path.iterdir: a directory entry knows whether it is a file without a stat of its own (10,000
    # plugin files: 55 ms, not 85-110 ms, of a start that loads no plugin until they are all listed).
    try:
        with os.scandir(directory) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        if _skipped(name):
            continue
        try:
            if name.endswith(".py") and entry.is_file():
                path = directory / name
                found.append(PluginSource(name[:-3], str(path), path=path))
            elif entry.is_dir() and name.isidentifier() and os.path.isfile(os.path.join(entry.path, "__init__.py")):
                path = directory / name
                found.append(PluginSource(name, str(path), path=path / "__init__.py"))
        except OSError:  # gone, or unreadable, since it was listed: as Path.is_file would say, not a plugin
            continue
    return found


def scan_entry_points(group: str = ENTRY_POINT_GROUP) -> list[PluginSource]:
    """The entry points of ``group`` (value ``module:Class``), sorted by name."""
    from importlib.metadata import entry_points  # here, not at the top: a runner never pays for it (4.5 MiB)

    selected = entry_points(group=group)
    return [
        PluginSource(ep.name, f"entry point {ep.name} = {ep.value}", entry_point=ep.value)
        for ep in sorted(selected, key=lambda ep: ep.name)
    ]


def discover(directories: Iterable[Path], group: str | None = ENTRY_POINT_GROUP) -> list[PluginSource]:
    """Every plugin source: each directory in order, then the entry points of ``group``."""
    sources = [source for directory in directories for source in scan_directory(Path(directory))]
    if group:
        sources.extend(scan_entry_points(group))
    return sources


def split_path(value: str) -> list[Path]:
    """Split an ``os.pathsep``-separated list of directories, dropping empty parts."""
    return [Path(part) for part in value.split(os.pathsep) if part.strip()]


def source_file(source: PluginSource) -> Path | None:
    """The file holding the plugin's code, found without running it (None if it cannot be found)."""
    if source.path is not None:
        return source.path
    if source.entry_point is None:
        return None
    module = source.entry_point.partition(":")[0].strip()
    # Walk the path finders part by part: importlib.util.find_spec would import (run) a dotted module's parents.
    locations: list[str] | None = None
    spec = None
    for part in module.split("."):
        try:
            spec = PathFinder.find_spec(part, locations)
        except (ImportError, ValueError):
            return None
        if spec is None:
            return None
        locations = list(spec.submodule_search_locations or [])
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


def declared_attribute(source: PluginSource, attribute: str, class_names: Sequence[str] = ()) -> object:
    """A literal class attribute (such as ``isolation``) read from the plugin's source text with ``ast``.

    The server must know that a plugin wants process isolation before it runs a line of it, so this
    reads the module without importing it. Returns None when the attribute is absent or not a literal.
    """
    return declared_attributes(source, (attribute,), class_names)[attribute]


def _read(path: Path) -> bytes:
    """The bytes of ``path`` (a plugin's source): ``Path.read_bytes`` without its buffered file object (5 us a
    small file, not 11: the core reads every source it loads)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


#: The largest source text the core hands on to be imported as it read it (``Scanned.text``); a larger one is read
#: again where it is imported, so that a request to a runner stays small.
CARRIED_TEXT = 64 * 1024


@dataclass(frozen=True, slots=True)
class Scanned:
    """What a source declares, read from its text without running it, and that text (its bytes as read, up to
    :data:`CARRIED_TEXT`; else None): importing those bytes runs exactly what was scanned, and spares a second read."""

    declared: dict[str, object]
    text: bytes | None = None


def declared_attributes(source: PluginSource, attributes: Sequence[str],
                        class_names: Sequence[str] = ()) -> dict[str, object]:
    """``declared_attribute`` of each of ``attributes``, the source read (and parsed, if need be) once: the
    first literal assignment of each in a class body, or None."""
    return scan(source, attributes, class_names).declared


def scan(source: PluginSource, attributes: Sequence[str], class_names: Sequence[str] = ()) -> Scanned:
    """``declared_attributes``, with the text it read (``Scanned``)."""
    found: dict[str, object] = dict.fromkeys(attributes)
    path = source_file(source)
    if path is None:
        return Scanned(found)
    try:
        text = _read(path)
    except OSError:
        return Scanned(found)
    carried = text if len(text) <= CARRIED_TEXT and path is source.path else None  # ``is``: Path's == is Python's
    try:
        # Parsing is most of a load's cost in the core: an ASCII source that never spells the name cannot assign it
        # (identifiers are NFKC-normalised, so another spelling of it needs a non-ASCII character).
        wanted = {a for a in attributes if not text.isascii() or a.encode() in text}
        if not wanted:
            return Scanned(found, carried)
        tree = ast.parse(text, filename=str(path))
    # A source can be built to exhaust the parser (a chain of 200,000 operators: RecursionError; 100,000 nested
    # ``not``: MemoryError, from the parser's own stack limit): nothing is declared then, and the same text cannot
    # compile where the plugin is imported either, which fails it there.
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return Scanned(found, carried)
    for node in tree.body:
        if not isinstance(node, ast.ClassDef) or (class_names and node.name not in class_names):
            continue
        for statement in node.body:
            targets: list[ast.expr] = []
            value: ast.expr | None = None
            if isinstance(statement, ast.Assign):
                targets, value = statement.targets, statement.value
            elif isinstance(statement, ast.AnnAssign) and statement.value is not None:
                targets, value = [statement.target], statement.value
            for target in targets:
                if value is not None and isinstance(target, ast.Name) and target.id in wanted:
                    wanted.discard(target.id)
                    try:
                        found[target.id] = ast.literal_eval(value)
                    except (ValueError, TypeError, RecursionError, MemoryError):  # not a literal, or built to hurt
                        found[target.id] = None
                    if not wanted:
                        return Scanned(found, carried)
    return Scanned(found, carried)
