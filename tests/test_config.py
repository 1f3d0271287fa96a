"""Pipeline configuration: shipped files load, errors name file and field, overrides win."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfp_ray.autoencoder import AutoencoderParams
from dfp_ray.config import DFPConfig, load_config, overrides_from_strings
from dfp_ray.schemas import load_schema
from dfp_ray.yaml_config import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["duo", "azure"])
def test_shipped_configs_load_and_keep_morpheus_defaults(name):
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.source == name and load_schema(cfg.schema_ref).name == name
    # The file restates the defaults; it must not drift from the one source of truth.
    assert cfg.autoencoder == AutoencoderParams()
    assert cfg.detection.threshold == DFPConfig().detection.threshold == 2.0
    assert cfg.window == DFPConfig().window


def test_unknown_and_invalid_keys_name_the_file_and_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source: duo\nautoencoder:\n  epochs: -3\n  learning_rat: 0.1\noutput:\n  format: xml\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    assert "autoencoder.epochs" in text
    assert "autoencoder.learning_rat: unknown key" in text
    assert "output.format" in text


def test_command_line_overrides_win_and_none_is_ignored(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("source: duo\noutput:\n  directory: from_file\nautoencoder:\n  epochs: 7\n")
    cfg = load_config(path, {"output.directory": "from_cli", "autoencoder.epochs": None,
                             **overrides_from_strings(["autoencoder.encoder_layers=[64, 32]", "ray.num_user_actors=3"])})
    assert cfg.output.directory == "from_cli"
    assert cfg.autoencoder.epochs == 7
    assert cfg.autoencoder.encoder_layers == [64, 32]
    assert cfg.ray.num_user_actors == 3


def test_bad_override_syntax_is_explained():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        overrides_from_strings(["autoencoder.epochs"])


def test_default_tracking_uri_is_sqlite_under_state_dir(tmp_path):
    cfg = load_config(None, {"state_dir": str(tmp_path / "st")})
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'st' / 'mlflow.db'}"
