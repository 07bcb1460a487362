"""aiohttp, imported with the CA certificates of its default TLS contexts loaded by a thread.

Importing aiohttp builds two TLS contexts (aiohttp/connector.py), and each loads the
system's CA certificates through ``set_default_verify_paths``: about 50 ms on our 2-core
machine, a fifth of `batchib run`'s start-up. OpenSSL does that work without the GIL, so
here the contexts are made without their certificates while aiohttp is imported, a thread
then loads them into the same contexts, and the main thread goes on meanwhile (the rest
of the imports, the job's set-up). :func:`wait_until_loaded` joins the thread before the
first connection. A connection made before that would fail, not pass: a context with no
certificates verifies nothing.

Only the CLI's `run` imports aiohttp this way, before anything else in the process can use
it; a program that imports batchib as a library imports aiohttp as usual. Only contexts
made by the importing thread are deferred: another thread making one meanwhile loads its
certificates at once. If aiohttp is already imported, or builds no context at import
(versions before 3.10.6 made them later, on first use), nothing is deferred.
"""

from __future__ import annotations

import atexit
import ssl
import sys
import threading

from batchib.errors import ConfigError

_loader: threading.Thread | None = None
_failure: list[BaseException] = []


def import_aiohttp() -> None:
    """Import aiohttp now; its default contexts' certificates load in a thread."""
    global _loader
    if "aiohttp" in sys.modules:
        return
    deferred: list[ssl.SSLContext] = []
    importer = threading.get_ident()
    shadowed = ssl.SSLContext.__dict__.get("set_default_verify_paths")
    load_now = ssl.SSLContext.set_default_verify_paths

    def defer(context: ssl.SSLContext) -> None:
        if threading.get_ident() == importer:
            deferred.append(context)
        else:
            load_now(context)

    ssl.SSLContext.set_default_verify_paths = defer  # type: ignore[method-assign,assignment]
    try:
        import aiohttp  # noqa: F401  (its contexts are made here)
    finally:
        if shadowed is None:
            del ssl.SSLContext.set_default_verify_paths
        else:
            ssl.SSLContext.set_default_verify_paths = shadowed  # type: ignore[method-assign]
        # Even when the import failed part way: contexts made before it stay usable.
        if deferred:
            _loader = threading.Thread(
                target=_load, args=(deferred,), name="batchib-ca-certs", daemon=True
            )
            _loader.start()
            # A process that exits normally must not tear OpenSSL down under the thread
            # (its exit handlers free what the load is using: a segfault). os._exit, the
            # CLI's usual way out, runs neither.
            atexit.register(_loader.join)


def _load(contexts: list[ssl.SSLContext]) -> None:
    try:
        for context in contexts:
            context.set_default_verify_paths()
    except BaseException as exc:  # raised to whoever waits, as the import would have
        _failure.append(exc)


def wait_until_loaded() -> None:
    """Return once the deferred certificates are in their contexts (at once if none
    were deferred). Blocks the calling thread, as the import it stands for would have."""
    if _loader is not None:
        _loader.join()
    if _failure:
        raise ConfigError(f"cannot load the system's CA certificates: {_failure[0]}")
