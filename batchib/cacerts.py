"""aiohttp, imported with the CA certificates of its default TLS contexts loaded by a thread.

Importing aiohttp builds two TLS contexts (aiohttp/connector.py), and each loads the
system's CA certificates through ``set_default_verify_paths``: about 25 ms each on our
2-core machine, a fifth of `batchib run`'s start-up for both. OpenSSL does that work
without the GIL, so here the contexts are made without their certificates while aiohttp
is imported, and a thread loads them into the same contexts, each once the import has
moved on from it (the first midway through the import); the main thread goes on
meanwhile (the rest of the imports, the job's set-up). :func:`wait_until_loaded` waits
for the contexts that verify, before the first connection: in a 1-line run the main
thread got there 18 ms before the thread had loaded both, and 0.5-1 ms before it had
loaded the verified one (medians of 15). A connection made before its context's load
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
from collections.abc import Callable

from batchib.errors import ConfigError


class _Load:
    """One deferred context's certificates: `done` once loaded, or failed to be.

    `load` is the real ``set_default_verify_paths``, called directly: through the
    context, while the import's stand-in is in place, the call would be deferred again."""

    __slots__ = ("context", "done", "error", "load")

    def __init__(self, context: ssl.SSLContext, load: Callable[[ssl.SSLContext], None]) -> None:
        self.context = context
        self.load = load
        self.done = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.load(self.context)
        except BaseException as exc:  # raised to whoever waits, as the import would have
            self.error = exc
        finally:
            self.done.set()


_loader: threading.Thread | None = None  # the last import's loading thread, if it made one
_loads: list[_Load] = []  # every context deferred, in the order made


def import_aiohttp() -> None:
    """Import aiohttp now; its default contexts' certificates load in a thread.

    A context is handed to the thread once the import has moved on from it, to make the
    next context or past its end, so that the thread and the import never work on one
    context at once (aiohttp sets each one's ALPN protocols after loading it, and
    ssl.create_default_context its key log). The first is handed over midway through the
    import, when aiohttp makes its second."""
    global _loader
    if "aiohttp" in sys.modules:
        return
    work: queue.SimpleQueue[_Load | None] = queue.SimpleQueue()
    importer = threading.get_ident()
    shadowed = ssl.SSLContext.__dict__.get("set_default_verify_paths")
    load_now = ssl.SSLContext.set_default_verify_paths
    made: list[_Load] = []
    thread: threading.Thread | None = None

    def hand_over(load: _Load) -> None:
        nonlocal thread
        if thread is None:
            candidate = threading.Thread(
                target=_load_each, args=(work,), name="batchib-ca-certs", daemon=True
            )
            try:
                candidate.start()
            except RuntimeError:  # no thread to be had: load here, as the import would
                load.run()
                return
            thread = candidate
            # A process that exits normally must not tear OpenSSL down under the thread
            # (its exit handlers free what the load is using: a segfault). os._exit, the
            # CLI's usual way out, runs neither.
            atexit.register(candidate.join)
        work.put(load)

    def defer(context: ssl.SSLContext) -> None:
        if threading.get_ident() != importer:
            load_now(context)
            return
        if made:
            hand_over(made[-1])
        made.append(_Load(context, load_now))
        _loads.append(made[-1])

    ssl.SSLContext.set_default_verify_paths = defer  # type: ignore[method-assign,assignment]
    try:
        import aiohttp  # noqa: F401  (its contexts are made here)
    finally:
        if shadowed is None:
            del ssl.SSLContext.set_default_verify_paths
        else:
            ssl.SSLContext.set_default_verify_paths = shadowed  # type: ignore[method-assign]
        # Even when the import failed part way: contexts made before it stay usable.
        if made:
            hand_over(made[-1])
        work.put(None)  # nothing more to load
        if thread is not None:
            _loader = thread


def _load_each(work: queue.SimpleQueue[_Load | None]) -> None:
    while (load := work.get()) is not None:
        load.run()


def wait_until_loaded() -> None:
    """Return once every deferred context that verifies its peers has its certificates
    (at once if none were deferred). Blocks the calling thread, as the import it stands
    for would have. Whether a context verifies is asked now, not when it was deferred.

    aiohttp's unverified context (for `ssl=False` or a fingerprint, neither of which
    batchib asks for) may still be loading: it checks no certificate, and a failure to
    load it is not raised."""
    for load in _loads:
        if load.context.verify_mode != ssl.CERT_NONE:
            load.done.wait()
            if load.error is not None:
                raise ConfigError(f"cannot load the system's CA certificates: {load.error}")
