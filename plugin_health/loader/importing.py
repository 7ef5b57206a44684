"""Import a plugin source under a private namespace and find its one ``Plugin`` subclass.

A plugin file named ``json.py`` is imported as ``_plugin_health_plugins.json``: it never shadows or replaces
the standard library's or the application's modules, and its directory is never put on ``sys.path``.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types

from plugin_health.errors import MultiplePluginClassesError, NoPluginClassError
from plugin_health.loader.sources import PluginSource, head_and_tail, label_of
from plugin_health.plugin import Plugin

NAMESPACE = "_plugin_health_plugins"

_lock = threading.Lock()


def _namespace() -> types.ModuleType:
    package = sys.modules.get(NAMESPACE)
    if package is None:
        package = types.ModuleType(NAMESPACE, "Private namespace of plugins loaded from plugin directories.")
        package.__path__ = []
        sys.modules[NAMESPACE] = package
    return package


def _free_module_name(stem: str) -> str:
    name, n = f"{NAMESPACE}.{stem}", 1
    while name in sys.modules:
        n += 1
        name = f"{NAMESPACE}.{stem}__{n}"
    return name


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Python's loader of a source file, but for two things: given the source's bytes (``text``, as the core read
    them), it compiles those, and reads neither the file nor a bytecode cache (what runs is what the core scanned);
    and where no bytecode cache can be read (the file's directory has no ``__pycache__``) and none would be written
    (``sys.dont_write_bytecode``, ``PYTHONDONTWRITEBYTECODE``), it compiles the source without looking for one first
    (a path worked out, a ``stat`` and an ``open`` that fails: a fifth of importing a small plugin in a runner).
    Otherwise, and for everything else, it is that loader."""

    def __init__(self, fullname: str, path: str, text: bytes | None = None, code: types.CodeType | None = None) -> None:
        super().__init__(fullname, path)
        self.text = text
        self.code = code  # ``text`` compiled already (as ``source_to_code`` compiles it): used once

    def get_code(self, fullname: str) -> types.CodeType | None:
        if self.code is not None:
            code, self.code = self.code, None
            return code
        path = self.get_filename(fullname)
        if self.text is not None:
            return self.source_to_code(self.text, path)
        if not sys.dont_write_bytecode or _may_hold_bytecode(os.path.dirname(path)):
            return super().get_code(fullname)
        return self.source_to_code(self.get_data(path), path)


def _may_hold_bytecode(directory: str) -> bool:
    """Whether ``directory`` has a ``__pycache__``, or cannot be told: looked at once a directory (``_pycache``)."""
    found = _pycache.get(directory)
    if found is None:
        cache = os.path.join(directory, "__pycache__")
        found = _pycache[directory] = os.path.isdir(cache) or not os.path.isdir(directory)
    return found


#: Whether each directory imported from had a ``__pycache__`` when first asked (a cache made since is not read: the
#: source, compiled, is what it holds anyway).
_pycache: dict[str, bool] = {}


def cache_path(source: str) -> str:
    """``importlib.util.cache_from_source(source)``, the path of a source's bytecode cache: worked out in one step
    where nothing but the usual applies (no ``sys.pycache_prefix``, no optimization level, one path separator), as
    importlib's own path helpers took 7% of importing a small plugin in a runner (setting its ``__cached__``)."""
    head, separator, tail = source.rpartition(os.sep)
    head = head.rstrip(separator)  # as importlib joins paths
    tag = sys.implementation.cache_tag
    if sys.pycache_prefix is not None or sys.flags.optimize or os.altsep or not head or tag is None:
        return importlib.util.cache_from_source(source)
    base, dot, rest = tail.rpartition(".")
    return f"{head}{separator}__pycache__{separator}{base or rest}{dot}{tag}.pyc"


def _file_spec(name: str, loader: _SourceLoader, location: str,
               search: list[str] | None) -> importlib.machinery.ModuleSpec:
    """``importlib.util.spec_from_file_location(name, location, loader=loader, submodule_search_locations=search)``,
    its ``cached`` set (``cache_path``), made directly: a source file, with our loader."""
    spec = importlib.machinery.ModuleSpec(name, loader, origin=location, is_package=search is not None)
    spec.has_location = True
    spec.submodule_search_locations = search
    spec.cached = cache_path(location)  # what the module's __cached__ would have worked out, cheaper
    return spec


def _module_of(spec: importlib.machinery.ModuleSpec, loader: _SourceLoader) -> types.ModuleType:
    """``importlib.util.module_from_spec(spec)`` for a spec of ``_file_spec``'s (our loader makes no module of its
    own): the module with the attributes importlib gives it, in its order, set directly. importlib asks the new
    module for each first, and a module lacking one raises and catches an ``AttributeError`` each time: a tenth of
    importing a small plugin in a runner."""
    module = types.ModuleType(spec.name)
    module.__loader__ = loader
    module.__package__ = spec.parent
    module.__spec__ = spec
    if spec.submodule_search_locations is not None:
        module.__path__ = spec.submodule_search_locations
    module.__file__ = spec.origin
    module.__cached__ = spec.cached  # type: ignore[attr-defined]  # (not in typeshed's ModuleType)
    return module


def _drop_modules(module_name: str) -> None:
    for loaded in [m for m in sys.modules if m == module_name or m.startswith(module_name + ".")]:
        del sys.modules[loaded]


def import_source(source: PluginSource, text: bytes | None = None, location: str | None = None,
                  code: types.CodeType | None = None) -> types.ModuleType:
    """Run the source's module code (compiled from ``text``, its bytes as read already, if given: a file source's
    only; or ``code``, that text compiled already with ``location`` as its file name) and return the module; whatever
    it raises propagates. ``location``: ``str(source.path)``, if the caller has it (normalised, as ``os.path.abspath``
    gives it), which spares working it out again; the source's ``path`` is not read then (a runner's has none)."""
    if source.entry_point is not None:
        module_name = source.entry_point.partition(":")[0].strip()
        return importlib.import_module(module_name)
    with _lock:
        _namespace()
        module_name = _free_module_name(source.name)
        if location is None:
            assert source.path is not None
            location = str(source.path)
            search = [str(source.path.parent)] if source.is_package else None
        else:
            head, tail = head_and_tail(location)
            search = [head] if tail == "__init__.py" else None
        loader = _SourceLoader(module_name, location, text, code)
        spec = _file_spec(module_name, loader, location, search)
        module = _module_of(spec, loader)
        sys.modules[module_name] = module  # before exec, so that relative imports inside a package work
    try:
        loader.exec_module(module)
    except BaseException:
        _drop_modules(module_name)
        raise
    return module


def find_plugin_class(module: types.ModuleType, source: PluginSource, location: str | None = None) -> type[Plugin]:
    """The one ``Plugin`` subclass the source defines (for an entry point: the class it names). ``location``: the
    source's path as text, as ``import_source`` took it (a runner's source has no ``path``), which names the source
    when there is no such class, as ``source.label`` would."""
    if source.entry_point is not None and ":" in source.entry_point:
        attribute = source.entry_point.partition(":")[2].strip()
        candidate: object = module
        for part in attribute.split("."):
            candidate = getattr(candidate, part)
        if not (isinstance(candidate, type) and issubclass(candidate, Plugin)):
            raise NoPluginClassError(source.entry_point)
        return candidate
    prefix = module.__name__
    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, Plugin)
        and value is not Plugin
        and not _abstract_methods(value)  # what inspect.isabstract asks, without inspect
        and (value.__module__ == prefix or value.__module__.startswith(prefix + "."))
    ]
    unique = list(dict.fromkeys(classes))
    if len(unique) == 1:
        return unique[0]
    label = source.label if location is None else label_of(location)
    if not unique:
        raise NoPluginClassError(label)
    raise MultiplePluginClassesError(label, sorted(c.__qualname__ for c in unique))


def _abstract_methods(cls: type) -> object:
    """``getattr(cls, "__abstractmethods__", None)``: for a class with no metaclass, read where ``type`` reads it,
    its own namespace, without the ``AttributeError`` raised and caught when it is not there."""
    if type(cls) is type:
        return cls.__dict__.get("__abstractmethods__")
    return getattr(cls, "__abstractmethods__", None)


def load_plugin_class(source: PluginSource) -> type[Plugin]:
    """Import ``source`` and return its plugin class."""
    return find_plugin_class(import_source(source), source)
