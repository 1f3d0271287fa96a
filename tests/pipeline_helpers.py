"""Shared set-up for tests that run the real pipeline: a small, fast configuration."""

from __future__ import annotations

from pathlib import Path

from dfp_ray.config import DFPConfig, load_config

# Layers and epochs small enough for a 2-core machine; everything else is the defaults.
SMALL_AE = {
    "autoencoder.encoder_layers": [64, 32], "autoencoder.decoder_layers": [64],
    "autoencoder.epochs": 4, "autoencoder.device": "cpu",
}


def small_config(tmp: Path, **extra) -> DFPConfig:
    """A Duo pipeline config writing under ``tmp``: 2 pool actors, every score written, data
    roots at ``tmp``'s parent (pytest's temporary folders), small autoencoder."""
    overrides = {"source": "duo", "state_dir": str(tmp / "state"), "output.directory": str(tmp / "out"),
                 "output.write_all_scores": True, "min_train_rows": 5, "ray.num_user_actors": 2,
                 "ray.message_timeout_s": 300, "input.data_roots": [str(tmp.parent)], **SMALL_AE}
    overrides.update(extra)
    return load_config(None, overrides)
