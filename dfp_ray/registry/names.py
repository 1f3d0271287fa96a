"""Registered-model names: the ONE rule that turns (source, user) into a registry name.

Used both when a model is registered and when it is looked up, so the two cannot diverge
(Morpheus derives them differently: users with dots in their names are registered under one
name, looked up under another, and silently scored with the generic model).
"""
from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    pass
DEFAULT_NAME_TEMPLATE = "DFP-{source}-{user}"
DEFAULT_EXPERIMENT_TEMPLATE = "dfp/{source}/training/{model}"

# --------------------------------------------------------------------------------------- naming
_SAFE = re.compile(r"[A-Za-z0-9_-]+")
UNSAFE_CHAR = re.compile(r"[^A-Za-z0-9_-]")
HASH_SEPARATOR = "--"
HASH_CHARS = 10
MAX_READABLE = 100


def safe_user_name(user: str) -> str:
    """A registry-safe, deterministic, collision-free form of a user (or source) name.

    The rule (documented in docs/registry.md):

    1. A name made only of ``A-Z a-z 0-9 _ -``, not containing ``--`` and at most 100
       characters long is used unchanged (``alice``, ``generic_user``, ``bob-smith``).
    2. Any other name becomes ``<readable>--<hash>``: ``readable`` is the name with accents
       removed (``José`` -> ``Jose``), every remaining character outside ``A-Z a-z 0-9 _ -``
       replaced by ``_`` and cut to 100 characters; ``hash`` is the first 10 hex digits of the SHA-256
       of the ORIGINAL name (UTF-8). ``alice.smith@corp.com`` ->
       ``alice_smith_corp_com--<10 hex>``.

    Unchanged names never contain ``--`` and changed names always do, so the two kinds never
    collide; two changed names collide only if their SHA-256 prefixes do (40 bits). Hence
    ``a.b`` and ``a_b`` get different models. Case is preserved (MLflow's own stores treat
    ``Alice`` and ``alice`` as different names).
    """
    if not isinstance(user, str) or user == "":
        raise ValueError(f"a user name must be a non-empty string, got {user!r}")
    if _SAFE.fullmatch(user) and HASH_SEPARATOR not in user and len(user) <= MAX_READABLE:
        return user
    folded = "".join(c for c in unicodedata.normalize("NFKD", user) if not unicodedata.combining(c))
    readable = UNSAFE_CHAR.sub("_", folded)[:MAX_READABLE] or "user"
    digest = hashlib.sha256(user.encode("utf-8")).hexdigest()[:HASH_CHARS]
    return f"{readable}{HASH_SEPARATOR}{digest}"


# The generic (all-users) model's slot in the name template. No user name maps here:
# safe_user_name() returns either a name without "--" (rule 1) or one ending in "--" plus 10
# lowercase hex digits (rule 2); this has "--" and ends in "all". So a user literally named
# "generic_user" gets an ordinary model of its own and cannot replace the fallback model.
GENERIC_SLOT = "generic_user--all"
GENERIC_LABEL = "generic_user"  # how results and reports name the generic model (Morpheus's name)


def registered_model_name(source: str, user: str | None, template: str = DEFAULT_NAME_TEMPLATE) -> str:
    """THE registered-model name of ``user``'s model for ``source`` (``None``: the generic
    model); used to register AND to look up.

    >>> registered_model_name("duo", "alice.smith@corp.com")
    'DFP-duo-alice_smith_corp_com--970561bb53'
    >>> registered_model_name("duo", None)
    'DFP-duo-generic_user--all'
    >>> registered_model_name("duo", "generic_user")  # an ordinary user of that name
    'DFP-duo-generic_user'
    """
    if "{user}" not in template:
        raise ValueError(f"model name template {template!r} must contain {{user}} (one model per user)")
    slot = GENERIC_SLOT if user is None else safe_user_name(user)
    return template.format(source=safe_user_name(source), user=slot)


def user_label(user: str | None) -> str:
    """How results name a model's user: the user's name, or ``generic_user`` for the generic model."""
    return GENERIC_LABEL if user is None else user


@dataclass(frozen=True)
class ModelRef:
    """One registered model version."""

    name: str
    version: str
    run_id: str | None = None

    @property
    def label(self) -> str:
        """``name:version``: the ``model_version`` column of detections."""
        return f"{self.name}:{self.version}"

    @property
    def version_number(self) -> int:
        return int(self.version)


