"""Run a function on a module right after it is imported, whenever that happens (post-import hooks).

The plugin is loaded by ``import verl`` in every process, Ray workers included, but the trainer hooks
matter only in a process that imports verl's trainers (the driver), and the registries only in one that
imports ``verl.trainer.ppo.core_algos``. Importing those modules eagerly would double the cost of
``import verl`` everywhere, so :func:`when_imported` defers the work to the import of the module itself:

- module already in ``sys.modules``: the function runs at once;
- otherwise a finder at the front of ``sys.meta_path`` wraps the loader verl's module would get anyway,
  and the function runs right after the module's code, before the ``import`` statement returns.

Either way the order of imports does not matter. A hook that raises is logged as an error and skipped:
it never fails the import of verl's module. This module imports nothing of verl.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

logger = logging.getLogger(__name__)

Hook = Callable[[ModuleType], None]

_LOCK = threading.RLock()
_HOOKS: dict[str, dict[str, Hook]] = {}  # module name -> {hook's qualified name: hook}


def _hook_name(hook: Hook) -> str:
    return f"{getattr(hook, '__module__', '')}.{getattr(hook, '__qualname__', repr(hook))}"


def when_imported(module_name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once ``module_name`` is imported (now, if it already is).

    Registering a hook of the same qualified name again replaces it (a reloaded plugin does not stack
    hooks); hooks must be idempotent, as one may run again for a module imported before.
    """
    with _LOCK:
        _HOOKS.setdefault(module_name, {})[_hook_name(hook)] = hook
        _install_finder()
        module = sys.modules.get(module_name)
    if module is not None and not _is_initializing(module):
        _run_hook(module, hook)


def _is_initializing(module: ModuleType) -> bool:
    """A module still running its own code (an import cycle); its loader runs the hooks when it ends."""
    spec = getattr(module, "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _run_hook(module: ModuleType, hook: Hook) -> None:
    """``hook(module)``, logging instead of raising."""
    try:
        hook(module)
    except Exception:
        logger.error("the GTPO plugin's hook %s failed on %s; the module is left as it is",
                     _hook_name(hook), module.__name__, exc_info=True)


def _run_hooks(module: ModuleType) -> None:
    """Run the hooks of ``module``; one that raises is logged and skipped, never raised into verl's import."""
    with _LOCK:
        hooks = list(_HOOKS.get(module.__name__, {}).values())
    for hook in hooks:
        _run_hook(module, hook)


class _HookedLoader(importlib.abc.Loader):
    """The loader the module would have had, plus the hooks after ``exec_module``; all else delegated."""

    def __init__(self, loader: Any):
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _run_hooks(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, is_package, ...: the original's
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds hooked modules through the other finders and hands back their spec with a hooked loader."""

    _gtpo_post_import_finder = True

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if not _HOOKS.get(fullname):
            return None
        for finder in sys.meta_path:
            if getattr(finder, "_gtpo_post_import_finder", False):
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(fullname, path, target) if find_spec is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader)
                return spec
        return None


def _install_finder() -> None:
    """Put one finder at the front of ``sys.meta_path`` (again at the front if something displaced it)."""
    if not any(getattr(finder, "_gtpo_post_import_finder", False) for finder in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
