"""The files a run writes, checked before anything is sent.

A run writes OUTPUT and, beside it, its lock, its manifest and (after a crash) its torn
tail; then the summary and, if asked, a line in the usage log. A --summary or
--usage-log naming one of those, or an input, would overwrite paid results or the
prompts themselves; one in a directory that does not exist would fail only once every
request had been paid for. Both are refused at the start instead.
"""

from __future__ import annotations

import os
from pathlib import Path

from batchib.config import Job
from batchib.errors import ConfigError, OutputError
from batchib.lock import lock_path
from batchib.manifest import manifest_path
from batchib.resultsfile import torn_path


def check_apart(job: Job) -> None:
    """ConfigError when two of the files the run writes are one file, or one is an input."""
    output = job.output
    if str(output) == "-":  # stdin for an input, but results need a file to append to
        raise ConfigError("-o - would write a file named '-': results go to a file, give a path")
    written = [
        ("the output", output),
        ("the output's lock", lock_path(output)),
        ("the output's manifest", manifest_path(output)),
        ("the output's torn-tail file", torn_path(output)),
        ("--summary", job.summary_path),
    ]
    if job.usage_log is not None:
        written.append(("--usage-log", job.usage_log))
    seen: dict[Path, str] = {}
    for name in job.inputs:
        if name == "-":
            continue
        resolved = Path(name).resolve()
        if resolved in seen:  # every line would be sent twice
            raise ConfigError(f"the input {name} is given more than once")
        seen[resolved] = f"the input {name}"
    for role, path in written:
        resolved = path.resolve()
        if resolved in seen:
            raise ConfigError(f"{role} {path} is also {seen[resolved]}")
        seen[resolved] = f"{role} {path}"


def check_writable(job: Job) -> None:
    """OutputError when the summary or the usage log could not be written at the end."""
    for role, path in (("the summary", job.summary_path), ("the usage log", job.usage_log)):
        if path is None:
            continue
        directory = path.parent
        if not directory.is_dir():
            raise OutputError(f"cannot write {role} {path}: {directory} is not a directory")
        if path.is_dir():
            raise OutputError(f"cannot write {role} {path}: it is a directory")
        # The summary is replaced through a new file in its directory; the log appended.
        target = directory if role == "the summary" or not path.exists() else path
        if not os.access(target, os.W_OK):
            raise OutputError(f"cannot write {role} {path}: {target} is not writable")
