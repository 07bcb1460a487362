"""batchib: run large batches of chat completions against an OpenAI-compatible gateway.

The library entry point is :func:`batchib.runner.run_batch`; the command line
(`batchib run`) is a thin layer over it. See :func:`run_requests` for the shortest
way to use it from Python.
"""

from batchib.version import __version__

__all__ = ["__version__"]
