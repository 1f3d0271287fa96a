"""fsspec options with bounded waits: every call to an object store ends, by default.

An S3 endpoint that accepts a connection and never answers used to hang a run forever.
:func:`storage_options_for` adds connect/read timeouts and a retry cap for ``s3://`` URLs
unless the user's ``storage_options`` already set them (so a slow store can be given more).
"""

from __future__ import annotations

import copy
from typing import Any

S3_CONNECT_TIMEOUT_S = 5
S3_READ_TIMEOUT_S = 10
S3_MAX_ATTEMPTS = 1  # botocore attempts per request
S3FS_RETRIES = 2  # s3fs's own retries of a request that timed out (it defaults to 5)


def storage_options_for(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """The options to open ``url`` with: the user's, plus bounded waits for ``s3://``.

    >>> storage_options_for("s3://logs/a.json", {})["config_kwargs"]["read_timeout"]
    10
    >>> storage_options_for("s3://logs/a.json", {"config_kwargs": {"read_timeout": 300}})["config_kwargs"]["read_timeout"]
    300
    >>> storage_options_for("/data/a.json", {"key": "k"})
    {'key': 'k'}
    """
    options = copy.deepcopy(storage_options or {})
    if not url.startswith(("s3://", "s3a://")):
        return options
    config = options.setdefault("config_kwargs", {})
    config.setdefault("connect_timeout", S3_CONNECT_TIMEOUT_S)
    config.setdefault("read_timeout", S3_READ_TIMEOUT_S)
    config.setdefault("retries", {"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"})
    return options


def open_fs(url: str, storage_options: dict[str, Any] | None):
    """``(filesystem, path)`` for ``url`` with :func:`storage_options_for`'s options; an S3
    filesystem also retries a timed-out request at most :data:`S3FS_RETRIES` times, so a store
    that never answers fails a request after ~20 s instead of minutes."""
    from fsspec.core import url_to_fs

    remote = "://" in url and not url.startswith("file://")
    fs, path = url_to_fs(url, **(storage_options_for(url, storage_options) if remote else {}))
    if getattr(fs, "retries", None) is not None and url.startswith(("s3://", "s3a://")):
        fs.retries = min(fs.retries, S3FS_RETRIES)
    return fs, path
