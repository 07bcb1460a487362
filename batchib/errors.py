"""batchib's exceptions.

    BatchibError              anything that makes a whole run pointless
    ├── ConfigError           settings or options that cannot work
    ├── InputError            an input file cannot be read
    └── OutputError           the results or summary file cannot be written

A request that fails after its retries is not an exception: it is a result with an
error, written to the output like any other.
"""


class BatchibError(Exception):
    """Base class of every error batchib raises on purpose."""


class ConfigError(BatchibError):
    """A setting is invalid; raised before any work starts."""


class OutputError(BatchibError):
    """The results, summary or ledger file cannot be written."""


class InputError(BatchibError):
    """An input file cannot be read (bad lines are not errors: they become records)."""
