"""Model, dataset and loss named by reference: ``package.module:callable`` or ``path/to/file.py:callable``.

A reference is what lets a learner process (or a torchrun rank on another node) find the user's
factory: it imports the module, or loads the file, and looks the name up. A Python callable passed to
``softsync.train`` is turned back into a reference here; a function of the user's script (``__main__``)
becomes the script's path, which other processes load under a name of their own, so its
``if __name__ == "__main__":`` block does not run again (multiprocessing's spawn rule).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import ConfigError, first_line

SEPARATOR = ":"


def is_reference(spec: str) -> bool:
    """Whether ``spec`` names a callable (``where:name``) rather than a built-in."""
    return SEPARATOR in spec and not is_object(spec)


def is_object(spec: str) -> bool:
    """Whether ``spec`` stands for a Python object passed to ``softsync.train`` (``<...>``), not loadable by name."""
    return spec.startswith("<") and spec.endswith(">")


def split(spec: str, flag: str) -> tuple[str, str]:
    """``where`` (a module or a .py file) and ``name`` (a dotted attribute path) of a reference."""
    where, _, name = spec.rpartition(SEPARATOR)
    if not where or not name or not all(part.isidentifier() for part in name.split(".")):
        raise ConfigError(
            f"{flag} {spec!r}: expected a built-in name, package.module:callable or path/to/file.py:callable"
        )
    return where, name


def is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where


def normalize(spec: str) -> str:
    """A file reference with an absolute path, so that a resumed run and every local process find the same file."""
    if not is_reference(spec):
        return spec
    where, _, name = spec.rpartition(SEPARATOR)
    if where and is_file(where):
        return f"{Path(where).expanduser().resolve()}{SEPARATOR}{name}"
    return spec


def short_name(spec: str) -> str:
    """A name for run directories: the callable's name of a reference, the built-in name otherwise."""
    if is_object(spec):
        return spec[1:-1].replace(" ", "-")
    return spec.rpartition(SEPARATOR)[2] if is_reference(spec) else spec


def load(spec: str, flag: str) -> Callable[..., Any]:
    """The callable a reference names; ConfigError (one line naming ``flag`` and ``spec``) when it cannot be had."""
    where, name = split(spec, flag)
    module = _load_file(where, spec, flag) if is_file(where) else _import(where, spec, flag)
    target: Any = module
    for part in name.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"{flag} {spec!r}: {where} has no {name!r}") from None
    if not callable(target):
        raise ConfigError(f"{flag} {spec!r}: {name} is a {type(target).__name__}, not a callable")
    return target


def _import(module: str, spec: str, flag: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is not None and module.startswith(error.name):
            raise ConfigError(
                f"{flag} {spec!r}: no module named {error.name!r} (is it installed, or on PYTHONPATH?)"
            ) from None
        raise ConfigError(f"{flag} {spec!r}: importing {module} failed: {first_line(error)}") from None
    except Exception as error:  # the user's module raised while it was imported
        raise ConfigError(f"{flag} {spec!r}: importing {module} failed: {first_line(error)}") from None


def _load_file(where: str, spec: str, flag: str) -> ModuleType:
    """Load a .py file once per process, under a name made from its path (never ``__main__``)."""
    path = Path(where).expanduser().resolve()
    main = sys.modules.get("__main__")
    main_file = getattr(main, "__file__", None)
    if main is not None and main_file is not None and Path(main_file).resolve() == path:
        return main  # the user's running script: its functions are already defined
    name = f"softsync_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    if not path.is_file():
        raise ConfigError(f"{flag} {spec!r}: no such file {str(path)!r}")
    loader_spec = importlib.util.spec_from_file_location(name, path)
    if loader_spec is None or loader_spec.loader is None:
        raise ConfigError(f"{flag} {spec!r}: {str(path)!r} cannot be loaded as Python")
    module = importlib.util.module_from_spec(loader_spec)
    # as when the file runs as a script: the modules beside it are importable
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    sys.modules[name] = module  # before it runs: classes defined in it can be pickled, it can import itself
    try:
        loader_spec.loader.exec_module(module)
    except BaseException as error:
        del sys.modules[name]
        if isinstance(error, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConfigError(f"{flag} {spec!r}: running {path.name} failed: {first_line(error)}") from None
    return module


def reference(target: Callable[..., Any]) -> str | None:
    """A reference other processes can load ``target`` by; None for a lambda, a nested function or an object."""
    module, qualname = getattr(target, "__module__", None), getattr(target, "__qualname__", None)
    if module is None or qualname is None or "<" in qualname:  # <lambda>, <locals>
        return None
    if module == "__main__":
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if main_file is None:  # an interactive session: no file to load it from
            return None
        return f"{Path(main_file).resolve()}{SEPARATOR}{qualname}"
    loaded = sys.modules.get(module)
    if loaded is not None and module.startswith("softsync_user_"):  # loaded from a file by load()
        return f"{Path(str(loaded.__file__)).resolve()}{SEPARATOR}{qualname}"
    return f"{module}{SEPARATOR}{qualname}"


def object_marker(target: Any) -> str:
    """What a config records for a Python object that has no reference: ``<Net object>``, ``<lambda>``."""
    name = getattr(target, "__qualname__", None)
    if isinstance(name, str) and callable(target) and not isinstance(target, type):
        return f"<{name.rpartition('.')[2]}>"
    return f"<{type(target).__name__} object>"


def search_path() -> list[str]:
    """This process's import path, to hand to the processes it starts ('' is the working directory)."""
    return [entry or str(Path.cwd()) for entry in sys.path]


def extend_search_path(entries: list[str]) -> None:
    """Add a parent's import path to this process's, after its own entries (multiprocessing's spawn does the same)."""
    for entry in entries:
        if entry not in sys.path:
            sys.path.append(entry)
