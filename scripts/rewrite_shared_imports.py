"""Rewrite references to the modules of ``eventline_shared`` that moved into its named packages.

``eventline_shared`` was one flat bag; its modules now live in ``server``, ``security``,
``observability``, ``storage``, ``streams`` and ``dev`` (see docs/architecture.md). This
script rewrites, in the files given (default: every tracked text file of the repository):

* ``from eventline_shared.<old> import a, b`` into one import per new home of each name;
* ``from eventline_shared import <old>`` (and the ``<old>.name`` uses of a module that was
  renamed or split) into imports of the new modules;
* dotted paths (``eventline_shared.<old>.name`` in strings and docs) and file paths
  (``libs/eventline_shared/<old>.py``);

and moves any migration left in ``libs/eventline_shared/migrations/`` into its service's
folder under ``libs/eventline_shared/storage/migrations/``. Running it twice changes
nothing the second time.

    .venv/bin/python scripts/rewrite_shared_imports.py [FILE ...]
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
P = "eventline_shared"

MODULES = {
    "grpc_server": "server.grpc_server",
    "handlers": "server.handlers",
    "dependencies": "observability.dependencies",
    "config": "server.config",
    "workers": "server.workers",
    "logs": "observability.logs",
    "tracing": "observability.tracing",
    "metrics": "observability.metrics",
    "auth": "security.api_keys",
    "database": "storage.database",
    "migrations": "storage.migrations",
    "stream": "streams.stream",
    "consumer_group": "streams.consumer_group",
    "group_commit": "streams.group_commit",
    "embedded": "dev.embedded",
    "embedded_cluster": "dev.embedded_cluster",
    "harness": "dev.harness",
}
"""Old module (under eventline_shared) -> its new home, for every name not listed in NAMES."""

NAMES: dict[str, dict[str, str]] = {
    "auth": {
        "SecuritySettings": "security.tls",
        "channel_target": "security.client_channels",
        "client_channel": "security.client_channels",
        "SERVICE_CONFIG": "security.client_channels",
        "SEGMENTATION_READS": "security.client_channels",
        "requiring_keys": "server.handlers",
    },
    "metrics": {"Operations": "server.operations", "counting_calls": "server.handlers"},
    "config": {name: "environment" for name in ("ConfigError", "env_str", "env_int", "env_float", "env_bool")},
    "dependencies": {"PostgreSQL": "storage.database", "Redis": "streams.stream"},
}
"""Old module -> {name: new module} for the names that left their module's new home."""

MIGRATION_FOLDERS = (("00", "ingestion"), ("01", "segmentation"), ("02", "campaigns"), ("03", "security"))
"""A migration's version prefix -> the folder of its service under storage/migrations."""

TEXT_SUFFIXES = {".py", ".pyi", ".md", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".txt", ".sh", ".json"}


def home(old: str, name: str | None = None) -> str:
    """The new dotted module (without the ``eventline_shared.`` prefix) of ``old``'s ``name``."""
    if name is not None and name in NAMES.get(old, {}):
        return NAMES[old][name]
    return MODULES[old]


def _names(body: str) -> list[tuple[str, str]]:
    """``a, b as c`` (parentheses, newlines and comments allowed) -> [(a, ""), (b, "c")]."""
    body = re.sub(r"#[^\n]*", "", body).replace("(", " ").replace(")", " ")
    found = []
    for part in body.split(","):
        words = part.split()
        if not words:
            continue
        found.append((words[0], words[2] if len(words) == 3 and words[1] == "as" else ""))
    return found


def _import_line(indent: str, module: str, names: list[tuple[str, str]]) -> str:
    listed = ", ".join(f"{name} as {alias}" if alias else name for name, alias in names)
    line = f"{indent}from {module} import {listed}"
    if len(line) <= 110:
        return line
    inner = "".join(f"{indent}    {name}{f' as {alias}' if alias else ''},\n" for name, alias in names)
    return f"{indent}from {module} import (\n{inner}{indent})"


_FROM_MODULE = re.compile(
    r"^(?P<indent>[ \t]*)from " + P + r"\.(?P<old>[a-z_]+) import (?P<body>\([^)]*\)|[^\n]*)", re.M
)
_FROM_PACKAGE = re.compile(r"^(?P<indent>[ \t]*)from " + P + r" import (?P<body>\([^)]*\)|[^\n]*)", re.M)


def _rewrite_from_module(match: re.Match[str]) -> str:
    old = match.group("old")
    if old not in MODULES:
        return match.group(0)
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, alias in _names(match.group("body")):
        groups.setdefault(f"{P}.{home(old, name)}", []).append((name, alias))
    return "\n".join(_import_line(match.group("indent"), module, names) for module, names in groups.items())


def _rewrite_python(text: str) -> str:
    text = _FROM_MODULE.sub(_rewrite_from_module, text)
    renamed: dict[str, str] = {}  # a module imported by its old name -> the name it is used by now

    def from_package(match: re.Match[str]) -> str:
        indent = match.group("indent")
        kept: list[tuple[str, str]] = []
        groups: dict[str, list[tuple[str, str]]] = {}
        for name, alias in _names(match.group("body")):
            if name not in MODULES:
                kept.append((name, alias))
                continue
            used = alias or name
            modules = {home(name, attribute) for attribute in _attributes(text, used)} or {home(name)}
            if alias:  # the old module under an alias of its own: keep it, from its default home
                modules = {home(name)}
            for module in sorted(modules):
                package, _, base = module.rpartition(".")
                new_alias = alias if alias and alias != base else ""
                if package:
                    groups.setdefault(f"{P}.{package}", []).append((base, new_alias))
                else:  # a foundation module, directly under eventline_shared
                    kept.append((base, new_alias))
                if not alias and base != name and len(modules) == 1:
                    renamed[name] = base
            if not alias and len(modules) > 1:
                renamed[name] = "*"
        lines = [_import_line(indent, P, kept)] if kept else []
        lines += [_import_line(indent, module, sorted(set(names))) for module, names in sorted(groups.items())]
        return "\n".join(lines)

    text = _FROM_PACKAGE.sub(from_package, text)
    for old, new in renamed.items():
        text = re.sub(rf"(?<![\w.]){old}\.([A-Za-z_]\w*)", _renamer(old, new), text)
    return text


def _renamer(old: str, new: str) -> Callable[[re.Match[str]], str]:
    """``old.name`` -> ``new.name``; with ``new`` "*" (a split module), the name's own module."""

    def rename(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"{home(old, name).rpartition('.')[2] if new == '*' else new}.{name}"

    return rename


def _attributes(text: str, module: str) -> set[str]:
    return set(re.findall(rf"(?<![\w.]){module}\.([A-Za-z_]\w*)", text))


def _dotted(match: re.Match[str]) -> str:
    old, name = match.group("old"), match.group("name")
    if old not in MODULES:
        return match.group(0)
    return f"{P}.{home(old, name)}" + (f".{name}" if name is not None else "")


_DOTTED = re.compile(r"(?<![\w.])" + P + r"\.(?P<old>[a-z_]+)(?![\w])(?:\.(?P<name>[A-Za-z_]\w*))?")
_PATH = re.compile(r"(?P<prefix>libs/)?" + P + r"/(?P<old>[a-z_]+)(?P<suffix>\.py\b|/)")


def _path(match: re.Match[str]) -> str:
    old = match.group("old")
    if old not in MODULES:
        return match.group(0)
    return f"{match.group('prefix') or ''}{P}/{MODULES[old].replace('.', '/')}{match.group('suffix')}"


_MIGRATION_PATH = re.compile(P + r"/migrations/(?=(?P<prefix>\d\d)\d\d_)")


def _migration_path(match: re.Match[str]) -> str:
    folder = dict(MIGRATION_FOLDERS).get(match.group("prefix"))
    return match.group(0) if folder is None else f"{P}/storage/migrations/{folder}/"


def rewrite(text: str, python: bool) -> str:
    if python:
        text = _rewrite_python(text)
    text = _DOTTED.sub(_dotted, text)
    text = _MIGRATION_PATH.sub(_migration_path, text)
    return _PATH.sub(_path, text)


def move_migrations() -> None:
    old = ROOT / "libs" / P / "migrations"
    if not old.is_dir():
        return
    for sql in sorted(old.glob("*.sql")):
        folder = next((name for prefix, name in MIGRATION_FOLDERS if sql.name.startswith(prefix)), None)
        if folder is None:
            sys.exit(f"{sql}: no service folder for this version; move it by hand")
        target = ROOT / "libs" / P / "storage" / "migrations" / folder / sql.name
        subprocess.run(["git", "mv", str(sql), str(target)], cwd=ROOT, check=True)
        print(f"moved {sql.relative_to(ROOT)} -> {target.relative_to(ROOT)}")


def tracked_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True)
    return [
        ROOT / line
        for line in listed.stdout.splitlines()
        if (Path(line).suffix in TEXT_SUFFIXES or Path(line).name in {"Makefile", "Dockerfile"})
        # The script and its test hold the old paths on purpose.
        and not line.startswith(
            ("clients/", "scripts/rewrite_shared_imports.py", "tests/unit/test_rewrite_shared_imports.py")
        )
    ]


def main(arguments: list[str]) -> None:
    move_migrations()
    files = [Path(argument) for argument in arguments] or tracked_files()
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        new = rewrite(text, path.suffix in {".py", ".pyi"})
        if new != text:
            path.write_text(new)
            print(f"rewrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
