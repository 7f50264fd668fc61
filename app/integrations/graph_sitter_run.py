"""Unchanged graph-sitter scripts with ``Codebase.ai`` through ai-worker.

Two ways, neither needs a change to the script:

1. The launcher (explicit, this process only)::

       aiw-graph-sitter run script.py [ARGS...]       # as `python script.py ARGS...`
       aiw-graph-sitter run -m package.module [ARGS...]

2. The environment switch ``AIW_GRAPH_SITTER=1``, for scripts started by something
   else (a scheduler, graph-sitter's own CLI, a notebook kernel). Enable it once per
   Python environment::

       aiw-graph-sitter hook enable     # writes aiw-graph-sitter.pth into site-packages
       AIW_GRAPH_SITTER=1 python script.py

   The ``.pth`` line runs at interpreter start (that is what ``.pth`` import lines
   do; coverage.py's subprocess support works the same way). With the variable
   unset it does one ``os.environ`` lookup and nothing else. With it set, it adds
   an import hook that calls ``install()`` right after graph-sitter's
   ``graph_sitter.core.codebase`` module is imported, so nothing is imported early
   and a script that never uses graph-sitter is not affected. ``hook disable``
   removes the file; ``hook status`` says where it is.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import runpy
import sys
import sysconfig
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

PTH_NAME = "aiw-graph-sitter.pth"
TARGET_MODULE = "graph_sitter.core.codebase"
# One line, run by site.py at every start of this environment's Python.
PTH_LINE = (
    'import os; os.environ.get("AIW_GRAPH_SITTER", "").strip() and '
    '__import__("app.integrations.graph_sitter_run", fromlist=["startup"]).startup()\n'
)


# --- the environment switch --------------------------------------------------------------


class _InstallAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of graph-sitter's codebase module so that
    ``install()`` runs as soon as that module has been executed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != TARGET_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        loader = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        original_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original_exec(module)
            _remove_hook()
            from app.integrations.graph_sitter import install

            install()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _remove_hook() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _InstallAfterImport)]


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})
ENV_SWITCH = "AIW_GRAPH_SITTER"


def switch_state(environ: Mapping[str, str] | None = None) -> bool | None:
    """``AIW_GRAPH_SITTER``: True (1/true/yes/on), False (0/false/no/off, unset), None for
    anything else. Standard library only: the startup hook runs it in every Python."""
    word = (os.environ if environ is None else environ).get(ENV_SWITCH, "").strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    return None


def startup() -> bool:
    """Called by the ``.pth`` line when ``AIW_GRAPH_SITTER`` is set: install now if
    graph-sitter is already imported, else right after it is. True when switched on.
    Nothing of ai-worker is imported until graph-sitter is."""
    state = switch_state()
    if state is None:
        from app.integrations.graph_sitter import env_switch_on

        env_switch_on()  # raises the ConfigError that names the variable
    if not state:
        return False
    if TARGET_MODULE in sys.modules:
        from app.integrations.graph_sitter import install

        install()
        return True
    if not any(isinstance(f, _InstallAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _InstallAfterImport())
    return True


def site_packages() -> Path:
    """Where this Python's ``.pth`` files are read from (the active environment)."""
    return Path(sysconfig.get_paths()["purelib"])


def hook_path() -> Path:
    return site_packages() / PTH_NAME


def enable_hook() -> Path:
    path = hook_path()
    path.write_text(PTH_LINE, encoding="utf-8")
    return path


def disable_hook() -> bool:
    path = hook_path()
    if path.exists():
        path.unlink()
        return True
    return False


# --- the launcher ------------------------------------------------------------------------


def run(
    target: str, args: Sequence[str], *, module: bool = False, **install_options: Any
) -> dict[str, Any]:
    """Run a script (or ``-m`` module) as ``__main__`` with ``install()`` in effect.
    Returns the globals the script ended with."""
    from app.integrations.graph_sitter import install

    install(**install_options)
    if module:
        sys.argv = [target, *args]
        return runpy.run_module(target, run_name="__main__", alter_sys=True)
    script = Path(target)
    if not script.is_file():
        raise SystemExit(f"aiw-graph-sitter: no such script: {target}")
    sys.argv = [target, *args]
    sys.path.insert(0, str(script.resolve().parent))
    return runpy.run_path(str(script), run_name="__main__")


USAGE = """\
usage: aiw-graph-sitter run [--provider NAME] SCRIPT [ARGS...]
       aiw-graph-sitter run [--provider NAME] -m MODULE [ARGS...]
       aiw-graph-sitter hook enable|disable|status

Run a graph-sitter script (or module) with Codebase.ai through ai-worker's providers;
everything after SCRIPT or -m MODULE goes to it. `hook enable` makes AIW_GRAPH_SITTER=1
do the same for any Python of this environment.
"""


def _usage_error(message: str) -> NoReturn:
    sys.stderr.write(f"{USAGE}\naiw-graph-sitter: {message}\n")
    raise SystemExit(2)


def _parse_run(args: list[str]) -> tuple[str, list[str], bool, str | None]:
    """(target, its arguments, is a module, provider): options stop at the target, as
    with ``python`` itself, so the script's own options pass through untouched."""
    provider: str | None = None
    while args:
        head = args.pop(0)
        if head == "--provider" and args:
            provider = args.pop(0)
        elif head.startswith("--provider="):
            provider = head.split("=", 1)[1]
        elif head == "-m" and args:
            return args[0], args[1:], True, provider
        elif head in ("-h", "--help"):
            sys.stdout.write(USAGE)
            raise SystemExit(0)
        elif head.startswith("-"):
            _usage_error(f"unknown option {head}")
        else:
            return head, args, False, provider
    _usage_error("give a SCRIPT or -m MODULE")


def _hook(action: str) -> None:
    if action == "enable":
        print(f"enabled: {enable_hook()} (set AIW_GRAPH_SITTER=1 to switch it on)")
    elif action == "disable":
        print("disabled" if disable_hook() else "was not enabled")
    elif action == "status":
        path = hook_path()
        state = "enabled" if path.exists() else "not enabled"
        switch = os.environ.get("AIW_GRAPH_SITTER", "")
        print(f"hook {state} ({path}); AIW_GRAPH_SITTER={switch!r}")
    else:
        _usage_error(f"unknown hook action {action!r}")


def main(argv: Sequence[str] | None = None) -> None:
    from app.config import ConfigError
    from app.core.errors import InvalidRequestError
    from app.integrations.graph_sitter import GraphSitterUnavailableError

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        raise SystemExit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command == "hook":
        if len(rest) != 1:
            _usage_error("hook takes one of enable, disable, status")
        _hook(rest[0])
        return
    if command != "run":
        _usage_error(f"unknown command {command!r}")
    target, target_args, module, provider = _parse_run(rest)
    try:
        run(target, target_args, module=module, provider=provider)
    except (GraphSitterUnavailableError, ConfigError, InvalidRequestError) as exc:
        raise SystemExit(f"aiw-graph-sitter: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    main()
