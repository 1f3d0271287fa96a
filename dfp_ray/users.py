"""Split a loaded frame into per-user frames (REFERENCE A4 step 6).

``generic_user`` gets every row; individual users get their own rows. Which of the two are
produced follows ``train_users`` (all = generic + individual; generic; individual; none).
Inference always splits by individual user: the user actor falls back to the generic model.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pandas as pd

from dfp_ray.config import GENERIC_USER, TrainUsers


def filter_users(df: pd.DataFrame, user_column: str, only: list[str], skip: list[str]) -> pd.DataFrame:
    if only:
        df = df[df[user_column].isin(only)]
    if skip:
        df = df[~df[user_column].isin(skip)]
    return df


def split_by_user(
    df: pd.DataFrame, user_column: str, *, train_users: TrainUsers = "individual", for_training: bool = True
) -> Iterator[tuple[str, pd.DataFrame]]:
    """Yield ``(user, frame)`` pairs; one groupby pass, frames keep time order."""
    if for_training and train_users in ("all", "generic"):
        yield GENERIC_USER, df
    if not for_training or train_users in ("all", "individual"):
        for user, frame in df.groupby(user_column, sort=True):
            yield str(user), frame.reset_index(drop=True)


def owner_index(user: str, pool_size: int) -> int:
    """Stable user -> actor assignment: the same user always maps to the same actor index.

    crc32 rather than ``hash()`` because Python salts string hashes per process, and the
    router, the driver and restarted actors must all agree.
    """
    return zlib.crc32(user.encode("utf-8")) % pool_size


def split_by_owner(df: pd.DataFrame, user_column: str, pool_size: int) -> list[pd.DataFrame]:
    """``pool_size`` frames: the rows of the users each actor owns (:func:`owner_index`)."""
    users = df[user_column].astype(str)
    owner_of_user = {u: owner_index(u, pool_size) for u in users.unique()}  # one crc32 per user
    owners = users.map(owner_of_user).to_numpy()
    return [df[owners == i].reset_index(drop=True) for i in range(pool_size)]

