"""Split users (Morpheus's ``DFPSplitUsers``): one frame per user, and which actor owns each user.

Which models a training message fits follows ``train_users``: ``all`` = the generic model (on
every row) + one per user; ``generic``; ``individual``; ``none``. The generic model is never a
"user" here: a user literally named ``generic_user`` is an ordinary user with a model of its
own, and cannot replace the fallback model (see :func:`dfp_ray.registry.names.generic_model_name`).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pandas as pd

from dfp_ray.config import TrainUsers


def filter_users(df: pd.DataFrame, user_column: str, only: list[str], skip: list[str]) -> pd.DataFrame:
    """``only_users`` / ``skip_users`` from the config.

    >>> df = pd.DataFrame({"username": ["a", "b", "c"]})
    >>> filter_users(df, "username", only=[], skip=["b"])["username"].tolist()
    ['a', 'c']
    """
    if only:
        df = df[df[user_column].isin(only)]
    if skip:
        df = df[~df[user_column].isin(skip)]
    return df


def trains_generic(train_users: TrainUsers) -> bool:
    return train_users in ("all", "generic")


def trains_individual(train_users: TrainUsers) -> bool:
    return train_users in ("all", "individual")


def split_by_user(df: pd.DataFrame, user_column: str) -> Iterator[tuple[str, pd.DataFrame]]:
    """``(user, frame)`` pairs in one groupby pass; frames keep their row order.

    >>> df = pd.DataFrame({"username": ["b", "a", "b"], "x": [1, 2, 3]})
    >>> [(u, f["x"].tolist()) for u, f in split_by_user(df, "username")]
    [('a', [2]), ('b', [1, 3])]
    """
    for user, frame in df.groupby(user_column, sort=True):
        yield str(user), frame.reset_index(drop=True)


def owner_index(user: str, pool_size: int) -> int:
    """Stable user -> actor assignment: the same user always maps to the same actor index.

    crc32 rather than ``hash()`` because Python salts string hashes per process, and the
    router, the driver and restarted actors must all agree.

    >>> owner_index("alice", 4) == owner_index("alice", 4)
    True
    """
    return zlib.crc32(user.encode("utf-8")) % pool_size


def split_by_owner(df: pd.DataFrame, user_column: str, pool_size: int) -> list[pd.DataFrame]:
    """``pool_size`` frames: the rows of the users each actor owns (:func:`owner_index`)."""
    users = df[user_column].astype(str)
    owner_of_user = {u: owner_index(u, pool_size) for u in users.unique()}  # one crc32 per user
    owners = users.map(owner_of_user).to_numpy()
    return [df[owners == i].reset_index(drop=True) for i in range(pool_size)]
