"""The registry tests of test_registry.py that touch the store, again with it in a real PostgreSQL.

Registration (runs, params, metrics, logged models, versions), lookup (one by one and bulk
``name IN (...)``) and cache refresh must behave the same when the tracking/registry store is a
PostgreSQL database (the store a production tracking server uses, see docs/registry.md) as
with the embedded sqlite file. Artifacts stay in a local folder, so the tests about artifact
files alone are not repeated here. Concurrent registration from several processes runs
without the sqlite file lock: PostgreSQL's transactions alone must keep version numbers free
of gaps and duplicates.
"""

from __future__ import annotations

import pytest

try:
    from tests.postgres_server import postgres_server  # noqa: F401 - fixture
except ImportError:
    from postgres_server import postgres_server  # noqa: F401 - fixture

from test_registry import (  # noqa: F401 - fixtures and tests collected here again
    model_a,
    model_b,
    register,
    test_bulk_lookup_and_prefetch_agree_with_one_by_one,
    test_cache_refreshes_to_a_newer_version,
    test_concurrent_registration_from_processes,
    test_dotted_user_is_found_under_its_own_name,
    test_each_version_is_a_ready_logged_model_of_its_own_run,
    test_register_twice_gives_versions_and_latest,
    test_run_logs_params_metrics_and_tags,
)

from dfp_ray.config import DFPConfig
from dfp_ray.registry import ModelRegistry

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # PostgreSQL + MLflow's tables: ~10-15 s to set up


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("dfp_state_pg")


@pytest.fixture(scope="module")
def registry(postgres_server, state_dir) -> ModelRegistry:
    """A registry whose store is a fresh PostgreSQL database, built from a config as the pipeline does."""
    uri = postgres_server.create_database("dfp_registry")
    cfg = DFPConfig(state_dir=str(state_dir), mlflow={"tracking_uri": uri,
                                                      "artifact_location": (state_dir / "mlartifacts").as_uri()})
    reg = ModelRegistry.from_config(cfg)
    assert reg.tracking_uri == uri and reg.client is not None  # opens the store: MLflow creates its tables
    return reg


def test_the_store_is_postgres(registry, postgres_server):
    """Not silently sqlite: the tables live in the PostgreSQL database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(registry.tracking_uri)
    try:
        with engine.connect() as conn:
            version = conn.execute(sqlalchemy.text("show server_version")).scalar()
            tables = set(sqlalchemy.inspect(conn).get_table_names())
    finally:
        engine.dispose()
    assert int(version.split(".")[0]) >= 12, version
    assert {"registered_models", "model_versions", "runs", "experiments"} <= tables


def test_a_user_named_like_the_generic_model_cannot_replace_it(registry, state_dir, model_a, model_b):  # noqa: F811
    """As in test_registry.py, with the controller configured for this store."""
    from dfp_ray.controllers.user import UserController
    from dfp_ray.schemas import load_schema

    generic = register(registry, None, model_a)
    impostor = register(registry, "generic_user", model_b)
    assert registry.latest_many("duo", [None, "generic_user"]) == {None: generic, "generic_user": impostor}
    cfg = DFPConfig(state_dir=str(state_dir), mlflow={"tracking_uri": registry.tracking_uri,
                                                      "artifact_location": registry.artifact_location})
    controller = UserController(cfg, load_schema("duo"))
    assert controller.model_for("brand-new-user")[1] == generic
    assert controller.model_for("generic_user")[1] == impostor
