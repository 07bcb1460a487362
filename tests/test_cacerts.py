"""aiohttp's default TLS contexts get the same CA certificates when a thread loads them."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys

import orjson
import pytest

from batchib import cacerts

# A fresh interpreter: aiohttp must not be imported yet for anything to be deferred.
PROBE = """
import ssl, sys
import orjson
from batchib import cacerts
cacerts.import_aiohttp()
deferred = cacerts._loader is not None
cacerts.wait_until_loaded()
from aiohttp import connector
reference = ssl.create_default_context()
print(orjson.dumps({
    "deferred": deferred,
    "aiohttp_imported": "aiohttp" in sys.modules,
    "verified": connector._SSL_CONTEXT_VERIFIED.cert_store_stats(),
    "unverified": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats(),
    "reference": reference.cert_store_stats(),
    "verify_mode": int(connector._SSL_CONTEXT_VERIFIED.verify_mode),
    "check_hostname": connector._SSL_CONTEXT_VERIFIED.check_hostname,
    "shadow_left": "set_default_verify_paths" in ssl.SSLContext.__dict__,
}).decode())
"""


def test_the_deferred_contexts_end_up_with_the_certificates_a_plain_import_loads() -> None:
    completed = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    )
    seen = orjson.loads(completed.stdout)

    assert seen["deferred"] and seen["aiohttp_imported"]
    assert seen["verified"] == seen["reference"]
    assert seen["unverified"] == seen["reference"]
    assert seen["verify_mode"] == int(ssl.CERT_REQUIRED) and seen["check_hostname"]
    # Contexts made after the import load their certificates themselves again.
    assert not seen["shadow_left"]


def test_nothing_is_deferred_once_aiohttp_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp  # noqa: F401  (as in any program that imported it first)

    monkeypatch.setattr(cacerts, "_loader", None)
    cacerts.import_aiohttp()

    assert cacerts._loader is None
    cacerts.wait_until_loaded()  # returns at once


def test_a_failure_to_load_is_raised_to_whoever_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        def set_default_verify_paths(self) -> None:
            raise ssl.SSLError("no store")

    monkeypatch.setattr(cacerts, "_loader", None)
    monkeypatch.setattr(cacerts, "_failure", [])
    cacerts._load([Broken()])  # type: ignore[list-item]

    with pytest.raises(ssl.SSLError, match="no store"):
        cacerts.wait_until_loaded()


def imported_by(*args: str) -> str:
    """-X importtime's report of `python -m batchib ARGS`."""
    env = {key: value for key, value in os.environ.items() if key != "BATCHIB_API_KEY"}
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "batchib", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    return completed.stderr


def test_only_the_run_command_imports_aiohttp_before_the_cli() -> None:
    assert "aiohttp" not in imported_by("--help")
    assert "aiohttp" not in imported_by("estimate", "--help")
    # run: aiohttp comes before click, so its certificates load while click is imported.
    run = imported_by("run", "--help")
    assert "aiohttp.connector" in run
    assert run.index("aiohttp.connector") < run.index("| click")
