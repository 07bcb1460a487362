"""aiohttp, imported with the CA certificates of its default TLS contexts loaded by a thread.

Importing aiohttp builds two TLS contexts (aiohttp/connector.py), and each loads the
system's CA certificates through ``set_default_verify_paths``: about 25 ms each on our
2-core machine, a fifth of `batchib run`'s start-up for both. OpenSSL does that work
without the GIL, so here the contexts are made without their certificates while aiohttp
is imported, and a thread loads them into the same contexts, starting with the first one
made; the main thread goes on meanwhile (the rest of the imports, the job's set-up).
:func:`wait_until_loaded` waits for the contexts that verify before the first connection:
in a 1-line run the main thread got there 18 ms before the thread had loaded both, and
1 ms before it had loaded the verified one. A connection made before its context's load
would fail, not pass: a context with no certificates verifies nothing.

Only the CLI's `run` imports aiohttp this way, before anything else in the process can use
it; a program that imports batchib as a library imports aiohttp as usual. Only contexts
made by the importing thread are deferred: another thread making one meanwhile loads its
certificates at once. If aiohttp is already imported, or builds no context at import
(versions before 3.10.6 made them later, on first use), nothing is deferred.
"""

from __future__ import annotations

import atexit
import queue
import ssl
import sys
import threading

from batchib.errors import ConfigError

# A deferred context, and the event set once its certificates are in (or failed to be).
_Deferred = tuple[ssl.SSLContext, threading.Event]

_loader: threading.Thread | None = None
_failure: list[BaseException] = []
# The events of the deferred contexts that verify their peers: the ones to wait for.
_verifying: list[threading.Event] = []


def import_aiohttp() -> None:
    """Import aiohttp now; its default contexts' certificates load in a thread, which
    starts with the first context made, midway through the import."""
    if "aiohttp" in sys.modules:
        return
    work: queue.SimpleQueue[_Deferred | None] = queue.SimpleQueue()
    importer = threading.get_ident()
    shadowed = ssl.SSLContext.__dict__.get("set_default_verify_paths")
    load_now = ssl.SSLContext.set_default_verify_paths

    def defer(context: ssl.SSLContext) -> None:
        global _loader
        if threading.get_ident() != importer:
            load_now(context)
            return
        loaded = threading.Event()
        if context.verify_mode != ssl.CERT_NONE:
            _verifying.append(loaded)
        work.put((context, loaded))
        if _loader is None:
            _loader = threading.Thread(
                target=_load, args=(work,), name="batchib-ca-certs", daemon=True
            )
            _loader.start()
            # A process that exits normally must not tear OpenSSL down under the thread
            # (its exit handlers free what the load is using: a segfault). os._exit, the
            # CLI's usual way out, runs neither.
            atexit.register(_loader.join)

    ssl.SSLContext.set_default_verify_paths = defer  # type: ignore[method-assign,assignment]
    try:
        import aiohttp  # noqa: F401  (its contexts are made here)
    finally:
        if shadowed is None:
            del ssl.SSLContext.set_default_verify_paths
        else:
            ssl.SSLContext.set_default_verify_paths = shadowed  # type: ignore[method-assign]
        # Even when the import failed part way: contexts made before it stay usable.
        work.put(None)  # nothing more to load


def _load(work: queue.SimpleQueue[_Deferred | None]) -> None:
    while (item := work.get()) is not None:
        context, loaded = item
        try:
            context.set_default_verify_paths()
        except BaseException as exc:  # raised to whoever waits, as the import would have
            _failure.append(exc)
        finally:
            loaded.set()


def wait_until_loaded() -> None:
    """Return once every deferred context that verifies its peers has its certificates
    (at once if none were deferred). Blocks the calling thread, as the import it stands
    for would have.

    aiohttp's unverified context (for `ssl=False`, which batchib never asks for) may
    still be loading: it checks no certificate. A context switched to verifying after it
    was deferred is not waited for; used before its load, it fails its handshakes."""
    for loaded in _verifying:
        loaded.wait()
    if _failure:
        raise ConfigError(f"cannot load the system's CA certificates: {_failure[0]}")
