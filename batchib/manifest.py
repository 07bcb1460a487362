"""The run manifest beside the output: what produced its results.

It records the inputs' fingerprints (for the record) and the settings that change what
is sent (the defaults merged into each line, and the gateway) — never the key. A rerun
whose settings differ would mix two kinds of results in one file; it is refused, with
the differences named, unless the user says to go on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from batchib.config import Job
from batchib.summary import utc_now, write_summary
from batchib.version import __version__


def manifest_path(output: Path) -> Path:
    return output.with_name(output.name + ".manifest.json")


def _fingerprint(name: str) -> dict[str, Any]:
    if name == "-":
        return {"path": "-"}
    stat = os.stat(name)
    return {"path": name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def result_settings(job: Job) -> dict[str, Any]:
    """The settings that change what is sent, and so what the results mean."""
    return {**job.describe()["defaults"], "base_url": job.settings.base_url}


def differences(job: Job) -> list[str]:
    """How this job's result settings differ from the ones that wrote OUTPUT so far."""
    path = manifest_path(job.output)
    if job.overwrite or not path.exists() or not job.output.exists():
        return []
    try:
        previous = orjson.loads(path.read_bytes()).get("settings", {})
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return [f"{path} is unreadable"]
    return [
        f"{key}: {previous.get(key)!r} before, {value!r} now"
        for key, value in result_settings(job).items()
        if previous.get(key) != value
    ]


def write_manifest(job: Job) -> None:
    write_summary(
        manifest_path(job.output),
        {
            "batchib_version": __version__,
            "written_at": utc_now(),
            "inputs": [_fingerprint(name) for name in job.inputs],
            "settings": result_settings(job),
        },
    )
