"""scripts/rewrite_shared_imports.py: code written against the flat eventline_shared, rewritten
to its named packages, imports names that exist there; a second run changes nothing."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rewrite_shared_imports", ROOT / "scripts/rewrite_shared_imports.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OLD = '''from eventline_shared import auth, config, database, values
from eventline_shared.metrics import DEPENDENCY_UP, Operations, counting_calls
from eventline_shared.grpc_server import (
    Context,  # a call's context
    database_timeout,
)
from eventline_shared.dependencies import DependencyMonitor, PostgreSQL, Redis


def wiring(settings):
    channel = auth.client_channel(settings.segmentation_addr, auth.SecuritySettings())
    key = auth.create_key
    error = config.ConfigError
    monkeypatch.setattr("eventline_shared.stream.connect", None)
    return "python -m eventline_shared.embedded", "libs/eventline_shared/migrations/0105_x.sql"
'''

NEW = '''from eventline_shared import environment, values
from eventline_shared.security import api_keys, client_channels, tls
from eventline_shared.storage import database
from eventline_shared.observability.metrics import DEPENDENCY_UP
from eventline_shared.server.operations import Operations
from eventline_shared.server.handlers import counting_calls
from eventline_shared.server.grpc_server import Context, database_timeout
from eventline_shared.observability.dependencies import DependencyMonitor
from eventline_shared.storage.database import PostgreSQL
from eventline_shared.streams.stream import Redis


def wiring(settings):
    channel = client_channels.client_channel(settings.segmentation_addr, tls.SecuritySettings())
    key = api_keys.create_key
    error = environment.ConfigError
    monkeypatch.setattr("eventline_shared.streams.stream.connect", None)
    return "python -m eventline_shared.dev.embedded", "libs/eventline_shared/storage/migrations/segmentation/0105_x.sql"
'''


def test_old_imports_become_the_packages_imports_once() -> None:
    script = _script()
    assert script.rewrite(OLD, True) == NEW
    assert script.rewrite(NEW, True) == NEW


def test_every_rewritten_name_exists_in_its_new_module() -> None:
    script = _script()
    for old, new in script.MODULES.items():
        assert (ROOT / "libs/eventline_shared" / new.replace(".", "/")).with_suffix(".py").exists() or (
            ROOT / "libs/eventline_shared" / new.replace(".", "/") / "__init__.py"
        ).exists(), f"{old} -> {new}"
    for old, names in script.NAMES.items():
        for name, new in names.items():
            module = importlib.import_module(f"eventline_shared.{new}")
            assert hasattr(module, name), f"eventline_shared.{old}.{name} -> eventline_shared.{new}"
    # No module that moved is left at its old place.
    leftovers = [old for old in script.MODULES if (ROOT / "libs/eventline_shared" / f"{old}.py").exists()]
    assert leftovers == []
