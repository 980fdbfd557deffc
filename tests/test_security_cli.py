"""The CLI with keys: `llmmeter keys`, where the CLI finds its key, and what it says without one;
and the local admin key `make run` keeps."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import asyncpg
import pytest

from llmmeter import keyformat
from llmmeter.cli.main import main
from llmmeter_alerts.server import AlertsServer
from llmmeter_common.auth.keystore import KeyStore
from llmmeter_common.stack import _keep_key, _local_keys
from llmmeter_query.server import QueryServer

from keyring import ADMIN


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_keys_create_list_use_and_revoke(query_server: QueryServer, alerts_server: AlertsServer,
                                               tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    alerts = ("--alerts-addr", f"127.0.0.1:{alerts_server.port}")
    query = ("--query-addr", f"127.0.0.1:{query_server.port}")
    code, out, err = await _run(capsys, "keys", "create", "--name", "pay-dash", "--role", "read",
                                "--team", "payments", *alerts)
    assert code == 0 and "only time it is shown" in err
    key = out.strip()
    key_id, _ = keyformat.parse(key) or ("", "")
    assert key_id and f"key {key_id} (read, team payments)" in err

    code, out, _ = await _run(capsys, "keys", "list", "--format", "json", *alerts)
    listed = {k["key_id"]: k for k in json.loads(out)["keys"]}
    assert code == 0 and listed[key_id]["role"] == "ROLE_READ" and listed[key_id]["team"] == "payments"
    assert key.removeprefix("llmm_")[13:] not in out

    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    code, out, _ = await _run(capsys, "usage", "summary", "--format", "json", "--api-key-file", str(key_file),
                              *query)
    assert code == 0 and "summary" in json.loads(out)
    code, _, err = await _run(capsys, "keys", "list", "--api-key-file", str(key_file), *alerts)
    assert code == 1 and "PERMISSION_DENIED" in err and key.removeprefix("llmm_")[13:] not in err

    code, out, _ = await _run(capsys, "keys", "revoke", key_id, *alerts)
    assert code == 0 and f"revoked key {key_id}" in out
    code, out, _ = await _run(capsys, "keys", "list", "--all", "--format", "json", *alerts)
    assert "revoke_time" in {k["key_id"]: k for k in json.loads(out)["keys"]}[key_id]


async def test_keys_generate_prints_a_fresh_well_formed_key(capsys: pytest.CaptureFixture[str]) -> None:
    first, second = [(await _run(capsys, "keys", "generate"))[1].strip() for _ in range(2)]
    assert keyformat.parse(first) and keyformat.parse(second) and first != second


async def test_the_cli_finds_the_local_key_and_says_what_to_do_without_one(
        query_server: QueryServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    query = ("--query-addr", f"127.0.0.1:{query_server.port}")
    monkeypatch.delenv("LLMMETER_API_KEY")
    monkeypatch.chdir(tmp_path)
    code, _, err = await _run(capsys, "usage", "summary", *query)
    assert code == 1 and "UNAUTHENTICATED" in err and "LLMMETER_API_KEY" in err
    (tmp_path / ".llmmeter").mkdir()
    (tmp_path / ".llmmeter" / "admin.key").write_text(ADMIN.token + "\n")
    inside = tmp_path / "some" / "folder"
    inside.mkdir(parents=True)
    monkeypatch.chdir(inside)  # the project root is a parent
    code, out, _ = await _run(capsys, "usage", "summary", "--format", "json", *query)
    assert code == 0 and json.loads(out)["summary"]["request_count"] == "0"


async def test_make_run_keeps_one_admin_key_and_renews_the_alerts_key(db_url: str, tmp_path: Path) -> None:
    admin, alerts = await _local_keys(db_url, "")
    again, alerts2 = await _local_keys(db_url, admin)
    assert again == admin and alerts2 != alerts
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        store = KeyStore(pool, cache_seconds=0.001)
        admin_p, alerts_p = await store.authenticate(admin), await store.authenticate(alerts2)
        assert admin_p is not None and admin_p.role == "admin" and admin_p.team is None
        assert alerts_p is not None and alerts_p.role == "read"
        assert await store.authenticate(alerts) is None  # the previous run's alerts key is revoked
        await store.revoke(admin_p.key_id)
        renewed, _ = await _local_keys(db_url, admin)
        assert renewed != admin and await store.authenticate(renewed) is not None
    finally:
        await pool.close()
    key_file = tmp_path / ".llmmeter" / "admin.key"
    _keep_key(key_file, renewed)
    assert key_file.read_text().strip() == renewed
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_make_run_uses_the_database_url_the_readme_names(monkeypatch: pytest.MonkeyPatch) -> None:
    from llmmeter_common.stack import StackSettings

    monkeypatch.delenv("LLMMETER_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db:5432/llmmeter")
    assert StackSettings().database_url == "postgresql://u@db:5432/llmmeter"
    monkeypatch.delenv("DATABASE_URL")
    assert StackSettings().database_url is None
