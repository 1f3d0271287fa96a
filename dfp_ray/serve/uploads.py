"""Multipart uploads streamed to bounded temporary storage.

Why not FastAPI's ``UploadFile``: Starlette spools files to anonymous temporary files in
the system temp folder with no size limit, and reads the whole body before the route runs.
Here the body is parsed as it arrives (``python-multipart``'s streaming parser), each file
part goes straight to a file in a per-request folder under ``limits.upload_dir`` (mode 0700),
and these bounds hold:

* one request: at most ``limits.max_upload_bytes`` of body (the ``Content-Length`` is
  checked first; a chunked body is counted as it streams), else **413**;
* one text field: at most ``limits.max_field_bytes``, else 422;
* one replica: all uploads in progress together at most ``limits.upload_dir_max_bytes``,
  else **503** (a request reserves its declared length, or the per-request maximum when it
  declares none, before anything is written);
* only the fields a route declares (plus their aliases) are accepted; an unknown or repeated
  field is a 422 naming it, so a misspelt option is never silently ignored.

The folder is deleted when the request ends, whatever happened (an asynchronous job moves it
into its job folder first and deletes it when the job ends). When a request is refused while
its body is still arriving, up to ``DRAIN_LIMIT`` more bytes are read and discarded so that
the client receives the answer instead of a reset connection.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header
from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

DRAIN_LIMIT = 64 * 1024**2
"""Most bytes read (and discarded) after refusing a request, so the client sees the answer."""


@dataclass(frozen=True)
class FormSpec:
    """The multipart fields a route accepts: file fields, text fields, and accepted aliases."""

    files: dict[str, str]
    fields: dict[str, str]
    required_files: tuple[str, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)

    def canonical(self, name: str) -> str:
        return self.aliases.get(name, name)

    def accepted(self) -> list[str]:
        return sorted([*self.files, *self.fields, *self.aliases])


@dataclass
class ParsedForm:
    """What a request sent: file fields as paths (under ``folder``), text fields as strings."""

    folder: Path
    files: dict[str, Path] = field(default_factory=dict)
    file_sizes: dict[str, int] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    spelled: dict[str, str] = field(default_factory=dict)  # canonical name -> name as sent
    body_bytes: int = 0


class UploadStore:
    """Per-replica upload storage with a byte budget (see the module docstring)."""

    def __init__(self, root: Path, *, max_request_bytes: int, max_total_bytes: int, max_field_bytes: int) -> None:
        self.root = root
        self.max_request_bytes = max_request_bytes
        self.max_total_bytes = max_total_bytes
        self.max_field_bytes = max_field_bytes
        self.reserved = 0  # bytes reserved by requests in progress (event-loop thread only)
        root.mkdir(parents=True, exist_ok=True, mode=0o700)

    @contextlib.asynccontextmanager
    async def receive(self, request: Request, spec: FormSpec) -> AsyncIterator[ParsedForm]:
        """Parse ``request``'s multipart body into a fresh folder; the folder is removed on exit."""
        declared = _content_length(request)
        if declared is not None and declared > self.max_request_bytes:
            if declared <= DRAIN_LIMIT:
                await _drain(request, DRAIN_LIMIT)
            raise self._too_large(declared)
        boundary = _boundary(request)
        need = declared if declared is not None else self.max_request_bytes
        if self.reserved + need > self.max_total_bytes:
            await _drain(request, min(need, DRAIN_LIMIT))
            raise ApiError(
                503, "storage_full",
                f"upload storage of this replica is busy ({self.reserved} of {self.max_total_bytes} bytes in use); "
                "retry shortly", headers={"Retry-After": "5"},
            )
        self.reserved += need
        folder = self.root / uuid.uuid4().hex
        folder.mkdir(mode=0o700)
        try:
            form = ParsedForm(folder=folder)
            await _parse(request, boundary, spec, form, self)
            missing = [name for name in spec.required_files if name not in form.files]
            if missing:
                name = missing[0]
                raise ApiError(422, "missing_field", f"field {name!r} is required: {spec.files[name]}", name)
            yield form
        finally:
            self.reserved -= need
            shutil.rmtree(folder, ignore_errors=True)

    def _too_large(self, size: int) -> ApiError:
        return ApiError(
            413, "too_large",
            f"the request body is {size} bytes, over this server's limit of {self.max_request_bytes} "
            "(limits.max_upload_bytes); send less data (a sample of the rows) or raise the limit",
        )

    def leftovers(self) -> list[str]:
        """Names under the upload root (empty when no request is in progress)."""
        return sorted(os.listdir(self.root)) if self.root.is_dir() else []


def _content_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_request", f"Content-Length {raw[:40]!r} is not a number") from None
    if value < 0:
        raise ApiError(400, "bad_request", "Content-Length is negative")
    return value


def _boundary(request: Request) -> bytes:
    content_type = request.headers.get("content-type", "")
    kind, params = parse_options_header(content_type)
    if kind != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(
            415, "unsupported_media_type",
            f"send the fields as multipart/form-data (got {content_type[:60]!r}); e.g. curl -F dataset=@train.npy "
            "or requests.post(url, files=..., data=...)",
        )
    return params[b"boundary"]


async def _drain(request: Request, limit: int) -> None:
    """Read and discard what is left of the body, at most ``limit`` bytes."""
    seen = 0
    with contextlib.suppress(ClientDisconnect, RuntimeError):
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > limit:
                break


class _PartState:
    def __init__(self) -> None:
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.name: str | None = None
        self.is_file = False
        self.sink: IO[bytes] | None = None
        self.text = bytearray()
        self.size = 0


async def _parse(request: Request, boundary: bytes, spec: FormSpec, form: ParsedForm, store: UploadStore) -> None:
    part = _PartState()

    def on_part_begin() -> None:
        nonlocal part
        part = _PartState()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part.header_field += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part.header_value += data[start:end]

    def on_header_end() -> None:
        part.headers[part.header_field.decode("latin-1").strip().lower()] = bytes(part.header_value)
        part.header_field.clear()
        part.header_value.clear()

    def on_headers_finished() -> None:
        disposition = part.headers.get("content-disposition")
        if disposition is None:
            raise ApiError(400, "bad_request", "a multipart part has no Content-Disposition header")
        _kind, params = parse_options_header(disposition)
        raw_name = params.get(b"name")
        if not raw_name:
            raise ApiError(400, "bad_request", "a multipart part has no field name")
        sent = raw_name.decode("utf-8", "replace")
        name = spec.canonical(sent)
        if name not in spec.files and name not in spec.fields:
            raise ApiError(
                422, "unknown_field", f"unknown field {sent!r}; this endpoint accepts: {', '.join(spec.accepted())}", sent
            )
        if name in form.files or name in form.fields:
            raise ApiError(
                422, "duplicate_field",
                f"field {sent!r} was sent twice (or with its alias {form.spelled.get(name)!r}); send it once", sent,
            )
        part.name = name
        form.spelled[name] = sent
        part.is_file = name in spec.files
        if part.is_file:
            path = form.folder / f"{name}.upload"
            part.sink = open(path, "wb")  # noqa: SIM115 - closed in on_part_end or below
            form.files[name] = path

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        part.size += len(chunk)
        if part.is_file:
            assert part.sink is not None
            part.sink.write(chunk)
        else:
            if part.size > store.max_field_bytes:
                raise ApiError(
                    422, "field_too_large",
                    f"field {part.name!r} is over {store.max_field_bytes} bytes; text fields hold short values "
                    "(send data as a file field)", part.name,
                )
            part.text += chunk

    def on_part_end() -> None:
        if part.name is None:
            return
        if part.is_file:
            assert part.sink is not None
            part.sink.close()
            part.sink = None
            form.file_sizes[part.name] = part.size
        else:
            try:
                value = part.text.decode("utf-8").strip()
            except UnicodeDecodeError:
                raise ApiError(422, "invalid_field", f"field {part.name!r} is not UTF-8 text", part.name) from None
            if value:  # an empty value (curl -F name=) means "not given"
                form.fields[part.name] = value
            else:
                form.spelled.pop(part.name, None)

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            form.body_bytes += len(chunk)
            if form.body_bytes > store.max_request_bytes:
                await _drain(request, DRAIN_LIMIT)
                raise store._too_large(form.body_bytes)
            try:
                parser.write(chunk)
            except ApiError:
                await _drain(request, DRAIN_LIMIT)
                raise
            except Exception as exc:  # python-multipart's parse errors (and their kin)
                await _drain(request, DRAIN_LIMIT)
                raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from exc
        try:
            parser.finalize()
        except Exception as exc:
            raise ApiError(400, "bad_request", f"malformed multipart body: {exc}") from exc
        if parser.state != MultipartState.END:
            raise ApiError(400, "bad_request", "the multipart body ended before its closing boundary (truncated upload?)")
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the connection before the upload ended") from None
    finally:
        if part.sink is not None:
            part.sink.close()
