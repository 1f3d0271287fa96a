"""Identifiers and timestamps drawn from the seeded generator (never uuid4 or the clock).

Byte-identical output for a seed depends on every id coming from numpy's seeded stream.
"""

from __future__ import annotations

import string

import numpy as np

_ALNUM = np.array(list(string.ascii_uppercase + string.digits))


def uuids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` RFC 4122 version-4 UUID strings from ``rng``."""
    if n == 0:
        return []
    b = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    b[:, 6] = (b[:, 6] & 0x0F) | 0x40
    b[:, 8] = (b[:, 8] & 0x3F) | 0x80
    hexes = b.tobytes().hex()
    out = []
    for i in range(n):
        h = hexes[32 * i : 32 * i + 32]
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def duo_keys(rng: np.random.Generator, prefix: str, n: int) -> list[str]:
    """Duo object keys look like ``DU3KC77WJ06Y5HIV7XKQ``: a 2-letter prefix + 18 upper-case alnum."""
    chars = _ALNUM[rng.integers(0, len(_ALNUM), size=(n, 18))]
    return [prefix + "".join(row) for row in chars]


def public_ips(rng: np.random.Generator, prefixes: np.ndarray) -> list[str]:
    """One address per row inside the given /16 prefixes (array of shape (n, 2))."""
    n = len(prefixes)
    tail = rng.integers(1, 255, size=(n, 2))
    return [f"{a}.{b}.{c}.{d}" for (a, b), (c, d) in zip(prefixes.tolist(), tail.tolist(), strict=True)]


def city_prefixes(seed: int, n_cities: int) -> np.ndarray:
    """A public-looking /16 per city, so addresses geolocate consistently within a data set."""
    rng = np.random.default_rng([seed, 99])
    firsts = np.array([a for a in range(11, 224) if a not in (100, 127, 169, 172, 192, 198, 203)])
    return np.stack([rng.choice(firsts, n_cities), rng.integers(0, 256, n_cities)], axis=1)


def iso_utc(ts_ms: np.ndarray, digits: int) -> list[str]:
    """ISO-8601 UTC strings with ``digits`` fractional digits (3, 6 or 7), no zone suffix."""
    base = np.datetime_as_string(np.asarray(ts_ms, dtype="datetime64[ms]"), unit="ms")
    if digits == 3:
        return base.tolist()
    pad = "0" * (digits - 3)
    return [s + pad for s in base.tolist()]


def column_values(frame, name: str) -> list:
    """A frame column as a Python list with missing values as None (never NaN).

    pandas 3 stores object columns of strings as a string dtype whose missing value is NaN;
    ``json.dumps`` would write that as the non-JSON token ``NaN``.
    """
    col = frame[name]
    values = col.tolist()
    if col.dtype.kind in "iub":
        return values
    return [None if (v is None or (isinstance(v, float) and v != v)) else v for v in values]
