"""aiohttp's default TLS contexts get the same CA certificates when a thread loads them."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchib import cacerts, parseproc
from batchib.errors import ConfigError


def in_a_fresh_interpreter(script: str, *args: str) -> Any:
    """What `script` prints (one JSON value), run where aiohttp is not imported yet."""
    completed = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return orjson.loads(completed.stdout)


def skip_without_a_ca_file(reference: dict[str, int]) -> None:
    if not reference["x509_ca"]:
        pytest.skip("no CA file here: an empty store would match an empty store")


# A fresh interpreter: aiohttp must not be imported yet for anything to be deferred.
PROBE = """
import ssl, sys
import orjson
from batchib import cacerts
cacerts.import_aiohttp()
deferred = cacerts._loader is not None
cacerts.wait_until_loaded()
from aiohttp import connector
verified_at_wait = connector._SSL_CONTEXT_VERIFIED.cert_store_stats()
cacerts._loader.join()  # the unverified context is not waited for
reference = ssl.create_default_context()
print(orjson.dumps({
    "deferred": deferred,
    "aiohttp_imported": "aiohttp" in sys.modules,
    "verified": verified_at_wait,
    "unverified": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats(),
    "reference": reference.cert_store_stats(),
    "verify_mode": int(connector._SSL_CONTEXT_VERIFIED.verify_mode),
    "check_hostname": connector._SSL_CONTEXT_VERIFIED.check_hostname,
    "shadow_left": "set_default_verify_paths" in ssl.SSLContext.__dict__,
}).decode())
"""


def test_the_deferred_contexts_end_up_with_the_certificates_a_plain_import_loads() -> None:
    seen = in_a_fresh_interpreter(PROBE)
    skip_without_a_ca_file(seen["reference"])

    assert seen["deferred"] and seen["aiohttp_imported"]
    assert seen["verified"] == seen["reference"]
    assert seen["unverified"] == seen["reference"]
    assert seen["verify_mode"] == int(ssl.CERT_REQUIRED) and seen["check_hostname"]
    # Contexts made after the import load their certificates themselves again.
    assert not seen["shadow_left"]


def test_nothing_is_deferred_once_aiohttp_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp  # noqa: F401  (as in any program that imported it first)

    monkeypatch.setattr(cacerts, "_loader", None)
    monkeypatch.setattr(cacerts, "_loads", [])
    monkeypatch.setattr(cacerts, "ssl", None)  # any use of it would raise
    cacerts.import_aiohttp()

    assert cacerts._loader is None
    cacerts.wait_until_loaded()  # returns at once


# Another thread making a context while aiohttp is imported loads its certificates itself.
OTHER_THREAD = """
import ssl, threading
import orjson
from batchib import cacerts
seen = {}
def other():
    while "set_default_verify_paths" not in ssl.SSLContext.__dict__:
        pass  # until the import has begun
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    seen["during_import"] = "set_default_verify_paths" in ssl.SSLContext.__dict__
    context.set_default_verify_paths()
    # Loaded here, by this thread: had it been deferred, the loader would have it.
    seen["other"] = context.cert_store_stats()
thread = threading.Thread(target=other)
thread.start()
cacerts.import_aiohttp()
thread.join()
seen["reference"] = ssl.create_default_context().cert_store_stats()
print(orjson.dumps(seen).decode())
"""


def test_a_context_made_by_another_thread_meanwhile_gets_its_certificates() -> None:
    seen = in_a_fresh_interpreter(OTHER_THREAD)

    skip_without_a_ca_file(seen["reference"])
    if not seen["during_import"]:
        pytest.skip("the other thread ran only after the import")
    assert seen["other"] == seen["reference"]


# The unverified context's load held until the waiter has returned: a wait that also
# covered it would never return (the script times out).
UNVERIFIED_LATE = """
import ssl, threading
import orjson
release = threading.Event()
plain = ssl.SSLContext.set_default_verify_paths
def held(context):
    if context.verify_mode == ssl.CERT_NONE:
        release.wait()
    plain(context)
ssl.SSLContext.set_default_verify_paths = held
from batchib import cacerts
cacerts.import_aiohttp()
cacerts.wait_until_loaded()
from aiohttp import connector
seen = {
    "verified": connector._SSL_CONTEXT_VERIFIED.cert_store_stats(),
    "unverified_before": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats(),
}
release.set()
cacerts._loader.join()
seen["unverified_after"] = connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats()
seen["reference"] = ssl.create_default_context().cert_store_stats()
print(orjson.dumps(seen).decode())
"""


def test_the_wait_covers_the_verified_context_and_not_the_unverified_one() -> None:
    seen = in_a_fresh_interpreter(UNVERIFIED_LATE)
    skip_without_a_ca_file(seen["reference"])

    assert seen["verified"] == seen["reference"]
    assert seen["unverified_before"]["x509_ca"] == 0
    assert seen["unverified_after"] == seen["reference"]


# No thread to be had (a process at its limit): the certificates load on the importing
# thread, as a plain import would, and the contexts end up the same.
NO_THREADS = """
import ssl, threading
import orjson
def refuse(self):
    raise RuntimeError("can't start new thread")
threading.Thread.start = refuse
from batchib import cacerts
cacerts.import_aiohttp()
cacerts.wait_until_loaded()
from aiohttp import connector
print(orjson.dumps({
    "loader": cacerts._loader is not None,
    "verified": connector._SSL_CONTEXT_VERIFIED.cert_store_stats(),
    "unverified": connector._SSL_CONTEXT_UNVERIFIED.cert_store_stats(),
    "reference": ssl.create_default_context().cert_store_stats(),
}).decode())
"""


def test_without_a_thread_the_certificates_load_on_the_importing_thread() -> None:
    seen = in_a_fresh_interpreter(NO_THREADS)
    skip_without_a_ca_file(seen["reference"])

    assert not seen["loader"]
    assert seen["verified"] == seen["reference"]
    assert seen["unverified"] == seen["reference"]


class Broken:
    """A stand-in context whose load fails."""

    def __init__(self, verify_mode: ssl.VerifyMode) -> None:
        self.verify_mode = verify_mode

    def set_default_verify_paths(self) -> None:
        raise ssl.SSLError(1, "no store")


def test_a_failure_to_load_is_raised_to_whoever_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = Broken(ssl.CERT_REQUIRED)
    load = cacerts._Load(broken, Broken.set_default_verify_paths)  # type: ignore[arg-type]
    monkeypatch.setattr(cacerts, "_loads", [load])
    load.run()

    with pytest.raises(ConfigError, match=r"CA certificates: .*no store"):
        cacerts.wait_until_loaded()


def test_a_failure_to_load_a_context_that_verifies_nothing_is_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = Broken(ssl.CERT_NONE)
    load = cacerts._Load(broken, Broken.set_default_verify_paths)  # type: ignore[arg-type]
    monkeypatch.setattr(cacerts, "_loads", [load])
    load.run()

    cacerts.wait_until_loaded()


def test_a_context_that_verifies_by_the_wait_is_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # as when it was deferred
    load = cacerts._Load(context, ssl.SSLContext.set_default_verify_paths)
    monkeypatch.setattr(cacerts, "_loads", [load])
    cacerts.wait_until_loaded()  # verifies nothing yet: not waited for

    context.verify_mode = ssl.CERT_REQUIRED
    waiter = threading.Thread(target=cacerts.wait_until_loaded)
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive()  # waiting for the load now
    load.run()
    waiter.join(5)
    assert not waiter.is_alive()


def test_the_client_waits_for_the_certificates_before_its_connector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from batchib import client
    from batchib.config import ApiKey, RunSettings

    steps: list[str] = []
    real_connector = client.aiohttp.TCPConnector

    def connector(**kwargs: Any) -> Any:
        steps.append("connector")
        return real_connector(**kwargs)

    monkeypatch.setattr(client, "wait_until_loaded", lambda: steps.append("wait"))
    monkeypatch.setattr(client.aiohttp, "TCPConnector", connector)

    async def go() -> None:
        settings = RunSettings(
            api_key=ApiKey("sk-test-0123456789"), base_url="http://127.0.0.1:9/v1"
        )
        async with client.open_client(settings):
            pass

    asyncio.run(go())
    assert steps == ["wait", "connector"]


def imported_by(*args: str, key: str | None = None, status: int | None = None) -> str:
    """-X importtime's report of `python -m batchib ARGS` (which must exit with `status`
    when given), with `key` as BATCHIB_API_KEY or no key at all."""
    env = {name: value for name, value in os.environ.items() if name != "BATCHIB_API_KEY"}
    if key is not None:
        env["BATCHIB_API_KEY"] = key
    completed = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "batchib", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert status is None or completed.returncode == status, completed.stderr[-2000:]
    return completed.stderr


def test_only_the_run_command_imports_aiohttp_before_the_cli(tmp_path: Path) -> None:
    assert "aiohttp" not in imported_by("--help")
    assert "aiohttp" not in imported_by("estimate", "--help")
    assert "aiohttp" not in imported_by("run", "--help")
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "hi"}\n')
    estimate = imported_by("estimate", str(source), "--model", "gpt-5.4", status=0)
    assert "aiohttp" not in estimate
    # A run that sends nothing starts neither aiohttp nor the parser process.
    out = str(tmp_path / "out.jsonl")
    for flag in ("--dry-run", "--print-config"):
        run = imported_by(
            "run", str(source), "-o", out, "--model", "gpt-5.4", flag, key="sk-0123456789", status=0
        )
        assert "aiohttp" not in run and "batchib.parseproc" not in run
    # The same run without the flag: both (the parser process where it is used at all).
    args = ("--base-url", "http://127.0.0.1:9/v1", "--max-attempts", "1")
    run = imported_by("run", str(source), "-o", out, "--model", "gpt-5.4", *args, key="sk-0123")
    assert "aiohttp" in run
    summary = orjson.loads((tmp_path / "out.jsonl.summary.json").read_bytes())
    expected = "process" if parseproc.wanted(None, parseproc.usable_cpus()) else "event loop"
    assert summary["input_parser"]["where"] == expected
    # run: aiohttp comes before click, so its certificates load while click is imported.
    run = imported_by("run", "no-such-input.jsonl", "--model", "m")
    assert "aiohttp.connector" in run
    assert run.index("aiohttp.connector") < run.index("| click")


# An aiohttp whose import fails after it made a context (a stand-in on sys.path).
HALF_IMPORT = """
import ssl, sys
import orjson
sys.path.insert(0, sys.argv[1])
from batchib import cacerts
try:
    cacerts.import_aiohttp()
except ImportError:
    pass
import made_first
cacerts.wait_until_loaded()
print(orjson.dumps([made_first.CONTEXT.cert_store_stats(),
                    ssl.create_default_context().cert_store_stats()]).decode())
"""


def test_contexts_made_before_a_failed_import_still_get_their_certificates(
    tmp_path: Path,
) -> None:
    (tmp_path / "made_first.py").write_text("import ssl\nCONTEXT = ssl.create_default_context()\n")
    (tmp_path / "aiohttp").mkdir()
    (tmp_path / "aiohttp" / "__init__.py").write_text(
        "import made_first\nraise ImportError('half way')\n"
    )
    made, reference = in_a_fresh_interpreter(HALF_IMPORT, str(tmp_path))

    skip_without_a_ca_file(reference)
    assert made == reference


EXIT_EARLY = """
from batchib import cacerts
cacerts.import_aiohttp()
assert cacerts._loader is not None
"""


def test_a_process_that_exits_while_the_certificates_load_exits_cleanly(tmp_path: Path) -> None:
    # Python's normal exit (not os._exit) runs OpenSSL's exit handlers, which freed what
    # the loading thread was using: a segfault in about 7 of 10 runs with this bundle.
    cafile = ssl.get_default_verify_paths().cafile
    if cafile is None:
        pytest.skip("no CA file here")
    bundle = tmp_path / "slow-to-load.pem"
    bundle.write_bytes(Path(cafile).read_bytes() * 20)
    env = dict(os.environ, SSL_CERT_FILE=str(bundle))
    for _ in range(3):
        completed = subprocess.run(
            [sys.executable, "-c", EXIT_EARLY], capture_output=True, env=env, timeout=60
        )
        assert completed.returncode == 0, completed.stderr
