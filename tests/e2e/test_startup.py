"""Services started as deployed (``python -m eventline_<service>``) that must not serve: each exits
at start, saying why in its log, instead of serving in a state that fails later."""

from __future__ import annotations

from pathlib import Path

import pytest

from eventline_shared.environment import ConfigError
from tests.conftest import CampaignsEnv, service_env
from tests.integration.test_migrate import LABELS, eventline_migrate
from tests.processes import ServiceProcess


async def test_auth_without_a_service_key_refuses_to_start(
    campaigns_env: CampaignsEnv, tmp_path: Path
) -> None:
    from eventline_campaigns.settings import Settings

    env = campaigns_env(EVENTLINE_AUTH="true")
    with pytest.raises(ConfigError, match="EVENTLINE_SERVICE_API_KEY"):
        Settings.from_env(env)
    process = ServiceProcess("campaigns", env, tmp_path).start()
    try:
        assert await process.exited() != 0
        assert "EVENTLINE_SERVICE_API_KEY" in process.logs()
    finally:
        process.kill()
    Settings.from_env({**env, "EVENTLINE_SERVICE_API_KEY": "a-key"})  # with one, it starts


async def test_the_process_exits_at_start_naming_the_missing_migration_and_serves_after_migrate(
    behind_url: str, stream_key: str, tmp_path: Path
) -> None:
    env = service_env(behind_url, stream_key, EVENTLINE_MIGRATE="false")
    process = ServiceProcess("segmentation", env, tmp_path).start()
    try:
        assert await process.exited() != 0
        assert (
            "eventline-segmentation: the database schema is behind this version: "
            f"missing migration {LABELS[-1]}. Run `eventline migrate`"
        ) in process.logs()
        migrated = await eventline_migrate(behind_url)
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout.splitlines()[0] == f"applied {LABELS[-1]}"
        process.start()
        await process.serving()
    finally:
        process.kill()
