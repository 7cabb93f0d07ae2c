import os

import pytest

POSTGRES_URL = os.environ.get("SPIN_TEST_POSTGRES_URL")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or the PostgreSQL server CI starts (SPIN_TEST_POSTGRES_URL)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/state.db"
        return
    if not POSTGRES_URL:
        pytest.skip("no PostgreSQL server: set SPIN_TEST_POSTGRES_URL (.ci/run starts one)")
    from sqlalchemy import create_engine

    from services.control_plane.db import Base

    engine = create_engine(POSTGRES_URL)
    Base.metadata.drop_all(engine)
    engine.dispose()
    yield POSTGRES_URL
    engine = create_engine(POSTGRES_URL)
    Base.metadata.drop_all(engine)
    engine.dispose()


@pytest.fixture
def roots(tmp_path):
    """The allowed data (inputs/) and storage (runs/) roots of a control plane under test."""
    (tmp_path / "inputs").mkdir()
    (tmp_path / "runs").mkdir()
    return tmp_path
