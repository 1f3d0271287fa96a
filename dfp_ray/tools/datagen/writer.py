"""Where the generated files go: any fsspec URL (a local folder, ``s3://bucket/prefix``, ...)."""

from __future__ import annotations

import json
import logging
from typing import Any

import fsspec

log = logging.getLogger(__name__)


class DatasetWriter:
    """Writes text files under one root through fsspec; refuses to mix with an older data set."""

    def __init__(self, out: str, storage_options: dict[str, Any] | None = None) -> None:
        self.out = out
        self.fs, self.root = fsspec.core.url_to_fs(out, **(storage_options or {}))
        self.root = self.root.rstrip("/")

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    def prepare(self, owned: list[str], overwrite: bool) -> None:
        """Make sure no files of an earlier run would be mixed into this one.

        ``owned`` are the top-level entries this run writes (``duo``, ``control_messages``, ...).
        """
        existing = [name for name in owned if self.fs.exists(self.path(name))]
        if existing and not overwrite:
            raise FileExistsError(
                f"{self.out} already holds {', '.join(existing)} from an earlier run; pass --overwrite "
                "(generate(..., overwrite=True)) to replace them, or choose another --out folder"
            )
        for name in existing:
            log.info("removing %s", self.path(name))
            self.fs.rm(self.path(name), recursive=True)
        self.fs.makedirs(self.root, exist_ok=True)

    def makedirs(self, relative: str) -> None:
        self.fs.makedirs(self.path(relative), exist_ok=True)

    def write_text(self, relative: str, text: str) -> None:
        with self.fs.open(self.path(relative), "w", encoding="utf-8") as f:
            f.write(text)

    def write_json(self, relative: str, obj: Any, indent: int | None = None) -> None:
        self.write_text(relative, json.dumps(obj, indent=indent) + ("\n" if indent else ""))
