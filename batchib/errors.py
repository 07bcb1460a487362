"""batchib's exceptions.

    BatchibError              anything that makes a whole run pointless
    ├── ConfigError           settings or options that cannot work
    └── OutputError           the results or summary file cannot be written

A request that fails after its retries is not an exception: it is a result with an
error, written to the output like any other. Nor is an input that cannot be read once
the run has started: it stops the run as a fatal answer does (the summary says why).
"""


class BatchibError(Exception):
    """Base class of every error batchib raises on purpose."""


class ConfigError(BatchibError):
    """A setting is invalid; raised before any work starts."""


class OutputError(BatchibError):
    """The results, summary or ledger file cannot be written."""
