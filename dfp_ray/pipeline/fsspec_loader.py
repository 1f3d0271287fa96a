"""fsspec loader: expand a message's globs (local or ``s3://``) into files with their batch times.

Each :class:`FileRef` carries size, modification time (and ETag where the store has one) and
the *batch time*, parsed from the file name (``DUO_2022-08-01T00_05_06.806Z.json``) or else the
modification time. All times are UTC.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from dfp_ray.readers.storage import open_fs

logger = logging.getLogger(__name__)


# YYYY-MM-DD, optionally [T or space]HH?MM?SS(.ffffff) with ':', '_' or '.' between the time
# fields, optionally Z. Not glued to other digits, so "x12022-08-01" or "2022-08-011" don't match.
_ISO_IN_NAME = re.compile(
    r"(?<!\d)(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
    r"(?:[T ](?P<hour>\d{1,2})[:_.](?P<minute>\d{1,2})[:_.](?P<second>\d{1,2})"
    r"(?:[.,](?P<fraction>\d+))?)?"
    r"(?P<zulu>Z)?(?!\d)"
)


class FileSelectionError(Exception):
    """Base of the errors that turn into a rejection of the message whose files they concern."""

    def __init__(self, reason: str, field: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field


class FileListingError(FileSelectionError):
    """Listing a glob failed (bad bucket, no permission, unreachable endpoint, ...)."""


class NoFilesMatched(FileSelectionError):
    """None of the globs matched a file."""

    def __init__(self, patterns: list[str], field: str | None = None):
        self.patterns = list(patterns)
        super().__init__(
            f"no files matched {self.patterns}: check the paths (relative globs resolve against the "
            f"router's working directory {os.getcwd()!r}) and, for s3://, the bucket and storage options",
            field,
        )


class NoFilesInWindow(FileSelectionError):
    """Files matched, but none fall inside the message's [start_time, end_time] window."""


class OutsideDataRoots(FileSelectionError):
    """A glob or file lies outside every configured data root (``input.data_roots``)."""


@dataclass
class FileRef:
    """One input file. ``url`` is a local absolute path or a URL such as ``s3://bucket/key``."""

    url: str
    size: int | None
    modified: datetime | None
    batch_time: datetime
    etag: str | None = None  # object stores' content tag; part of the cache key when known
    dated: bool = True  # the batch time came from the file's name (else: its modification time)




# --------------------------------------------------------------------------------------------
# Batch time from a file name
# --------------------------------------------------------------------------------------------


def _datetime_from_groups(groups: dict[str, str | None]) -> datetime | None:
    try:
        fraction = groups.get("fraction")
        micro = int((fraction + "000000")[:6]) if fraction else 0
        return datetime(
            int(groups["year"]),
            int(groups["month"]),
            int(groups["day"]),
            int(groups.get("hour") or 0),
            int(groups.get("minute") or 0),
            int(groups.get("second") or 0),
            micro,
            tzinfo=timezone.utc,
        )
    except (ValueError, TypeError, KeyError):
        return None  # e.g. 2022-13-45: not a date, look elsewhere


def batch_time_from_path(path: str, pattern: str | re.Pattern[str] | None = None) -> datetime | None:
    """The UTC time a file name carries, or ``None``.

    The file's own name is searched first (its first date wins), then the directories from the
    innermost outwards, so ``2022-08-01/DUO_2022-08-01T10_00_00Z.json`` gives 10:00, not
    midnight. ``pattern`` overrides the default (Morpheus's ``iso_date_regex_pattern``): named
    groups ``year``, ``month``, ``day`` and optionally ``hour``, ``minute``, ``second``,
    ``microsecond`` (``.806`` or ``806`` both read as a fraction of a second).
    """
    regex = _ISO_IN_NAME if pattern is None else re.compile(pattern)
    parts = path.replace("\\", "/").rstrip("/").split("/")
    for part in reversed(parts):
        for match in regex.finditer(part):
            groups = dict(match.groupdict())
            if "microsecond" in groups and groups.get("microsecond"):
                groups["fraction"] = groups.pop("microsecond").lstrip(".")
            when = _datetime_from_groups(groups)
            if when is not None:
                return when
    return None


# --------------------------------------------------------------------------------------------
# Listing
# --------------------------------------------------------------------------------------------


def _is_local(pattern: str) -> bool:
    return "://" not in pattern or pattern.startswith("file://")


def _to_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    if isinstance(value, str):
        try:
            return _to_utc(datetime.fromisoformat(value))
        except ValueError:
            return None
    return None


def _modified_from_info(info: dict[str, Any]) -> datetime | None:
    for key in ("mtime", "LastModified", "last_modified", "modified", "updated", "created"):
        if key in info:
            when = _to_utc(info[key])
            if when is not None:
                return when
    return None


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _local_path(pattern: str) -> str:
    local = pattern[len("file://"):] if pattern.startswith("file://") else pattern
    return os.path.abspath(os.path.expanduser(local))


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _static_prefix(path: str) -> str:
    """The part of a glob before its first wildcard component (``/data/duo`` of ``/data/duo/*.json``)."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if _has_magic(part):
            return "/".join(parts[:i]) or "/"
    return path


def check_data_roots(patterns: list[str], roots: list[str]) -> None:
    """Refuse globs that could reach outside every data root, before anything is listed.

    Local globs are resolved (``~``, ``..``, symlinks) and their fixed prefix must lie inside a
    local root; URLs (``s3://bucket/prefix/...``) must start with a URL root. Raises
    :class:`OutsideDataRoots` naming the roots and what to configure.

    >>> check_data_roots(["/data/duo/*.json"], ["/data"])
    >>> check_data_roots(["/data/../etc/shadow"], ["/data"])
    Traceback (most recent call last):
    ...
    dfp_ray.pipeline.fsspec_loader.OutsideDataRoots: '/data/../etc/shadow' is outside the data roots ['/data']: ...
    """
    local_roots = [r for r in roots if "://" not in r]
    url_roots = [r for r in roots if "://" in r]
    for pattern in patterns:
        if _is_local(pattern):
            prefix = os.path.realpath(_static_prefix(_local_path(pattern)))
            ok = any(_within(prefix, root) for root in local_roots)
        else:
            ok = any(_within(pattern, root) for root in url_roots)
        if not ok:
            raise OutsideDataRoots(
                f"{pattern!r} is outside the data roots {roots}: control messages may only read files "
                "inside them; add the folder (or s3:// prefix) to input.data_roots (--data-root) if it "
                "should be readable"
            )


def _check_found(refs: list[FileRef], roots: list[str]) -> None:
    """Matched local files must resolve inside a root too (a symlink may point anywhere)."""
    local_roots = [r for r in roots if "://" not in r]
    for ref in refs:
        if _is_local(ref.url) and not any(_within(os.path.realpath(_local_path(ref.url)), r) for r in local_roots):
            raise OutsideDataRoots(
                f"{ref.url!r} resolves outside the data roots {roots} (a symbolic link?): refused; "
                "add its target's folder to input.data_roots if it should be readable"
            )


def expand_globs(
    patterns: list[str],
    storage_options: dict | None = None,
    *,
    date_pattern: str | None = None,
    roots: list[str] | None = None,
) -> list[FileRef]:
    """List the files the globs match, sorted by batch time, then URL; no duplicates.

    Local globs (relative ones resolve against the current directory, ``~`` expands, ``**``
    recurses) and any fsspec URL (``s3://bucket/prefix/*.json``). ``storage_options`` go to
    remote filesystems only (for S3 through s3fs: ``key``, ``secret``, ``client_kwargs=
    {"endpoint_url": ...}``, ...). The listing cache of a remote filesystem is dropped before
    each glob, so files that arrived since the last call are seen.

    With ``roots`` (the data roots), globs and matched files outside them raise
    :class:`OutsideDataRoots` (see :func:`check_data_roots`). Raises :class:`NoFilesMatched`
    when no glob matches a file, and :class:`FileListingError` when listing itself fails.
    """
    import fsspec

    if roots is not None:
        check_data_roots(patterns, roots)
    found: dict[str, FileRef] = {}
    for pattern in patterns:
        try:
            if _is_local(pattern):
                fs = fsspec.filesystem("file")
                path = _local_path(pattern)
            else:
                fs, path = open_fs(pattern, storage_options)
                # fsspec instances are shared and cache listings; s3fs drops only a path and
                # its parents, not the sub-folders a ``**`` glob walks, so drop them all.
                fs.invalidate_cache()
            if _has_magic(path):
                infos = fs.glob(path, detail=True)
            else:
                infos = {path: fs.info(path)} if fs.exists(path) else {}
        except FileNotFoundError:
            infos = {}
        except Exception as exc:  # noqa: BLE001 - any listing failure is reported with its pattern
            raise FileListingError(f"cannot list {pattern!r}: {type(exc).__name__}: {exc}") from exc

        matched = 0
        for path_found, info in infos.items():
            if info.get("islink") and _is_local(pattern) and os.path.isfile(path_found):
                target = os.stat(path_found)  # a link to a file: listed, and checked against the roots
                info = {**info, "type": "file", "size": target.st_size, "mtime": target.st_mtime}
            if info.get("type", "file") != "file":
                continue
            url = path_found if _is_local(pattern) else fs.unstrip_protocol(path_found)
            if url in found:
                matched += 1
                continue
            modified = _modified_from_info(info)
            named = batch_time_from_path(path_found, date_pattern)
            batch_time = named or modified
            if batch_time is None:
                batch_time = datetime.now(timezone.utc)
                logger.warning("%s: no date in its name and no modification time; using now", url)
            etag = info.get("ETag") or info.get("etag")
            found[url] = FileRef(
                url=url,
                size=info.get("size"),
                modified=modified,
                batch_time=batch_time,
                etag=str(etag).strip('"') if etag else None,
                dated=named is not None,
            )
            matched += 1
        if matched == 0:
            logger.warning("glob %r matched no files", pattern)

    if not found:
        raise NoFilesMatched(patterns)
    refs = sorted(found.values(), key=lambda ref: (ref.batch_time, ref.url))
    if roots is not None:
        _check_found(refs, roots)
    return refs

