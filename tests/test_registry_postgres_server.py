"""The production registry: an ``mlflow server`` backed by a real PostgreSQL (docs/registry.md).

The server-side registry test and the end-to-end pipeline test run again here, against a
tracking server whose backend store is PostgreSQL instead of sqlite: registration over HTTP,
artifacts uploaded to and downloaded from the server, bulk lookups, and a Ray pipeline that
trains and scores through it.
"""

from __future__ import annotations

import pytest
from mlflow_server import MlflowServer
from test_pipeline_server import test_train_and_infer_through_a_tracking_server  # noqa: F401 - run here again
from test_registry_server import test_register_lookup_load_and_pyfunc_through_a_server  # noqa: F401

try:
    from tests.postgres_server import postgres_server  # noqa: F401 - fixture
except ImportError:
    from postgres_server import postgres_server  # noqa: F401 - fixture

pytestmark = [pytest.mark.postgres, pytest.mark.mlflow_server, pytest.mark.slow]


@pytest.fixture(scope="module")
def server(postgres_server, tmp_path_factory):
    """The tests' ``server``: a tracking server whose backend store is a PostgreSQL database."""
    backend = postgres_server.create_database("mlflow")
    with MlflowServer(tmp_path_factory.mktemp("mlflow_pg_server"), backend_uri=backend, start_timeout=180) as srv:
        assert "postgresql+psycopg2://" in " ".join(srv.command())
        yield srv


def test_the_server_keeps_its_registry_in_postgres(server, postgres_server):
    """What the other tests registered is in PostgreSQL's tables, not in a sqlite file."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(server.backend_uri)
    try:
        with engine.connect() as conn:
            names = set(conn.execute(sqlalchemy.text("select name from registered_models")).scalars())
    finally:
        engine.dispose()
    assert any(n.startswith("DFP-duo-") for n in names), names
    assert not list(server.workdir.glob("*.db"))


def test_the_shipped_production_config_reaches_the_server(server):
    """configs/registry_postgres.yaml, pointed at this server, finds what the pipeline registered."""
    from pathlib import Path

    from dfp_ray.config import load_config
    from dfp_ray.registry import ModelRegistry

    path = Path(__file__).resolve().parents[1] / "configs" / "registry_postgres.yaml"
    cfg = load_config(path, {"mlflow.tracking_uri": server.uri})
    registry = ModelRegistry.from_config(cfg)
    assert registry.artifact_location is None  # the server's artifact store, as the config says
    assert registry.latest("duo", None) is not None  # the generic model the pipeline test trained
