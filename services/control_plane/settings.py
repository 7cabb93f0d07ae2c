"""Control-plane settings, from the environment (prefix SPIN_) or arguments."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.control_plane.client import spin_home


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SPIN_", frozen=True)

    database_url: str = Field(
        default_factory=lambda: f"sqlite:///{spin_home() / 'state.db'}",
        description="SQLAlchemy URL: SQLite in $SPIN_HOME (default ~/.cache/spin) by default, PostgreSQL by URL.",
    )
    ray_dashboard_url: str = "http://127.0.0.1:8265"
    serve_url: str = Field(
        "http://127.0.0.1:8001", description="Ray Serve's HTTP proxy, where the runs' generators answer."
    )
    openai_timeout_s: float = Field(
        600.0, gt=0, description="How long a forwarded OpenAI request may wait for the generator's next bytes."
    )
    api_token: SecretStr | None = Field(
        None, description="Bearer token for mutating requests. Unset: mutating requests are refused."
    )
    # Storage and data may live only under these roots: local folders, or URI prefixes (s3://bucket/spin). By
    # default $SPIN_HOME and the `.cache` folder of where the server starts (the demo's and the README's).
    storage_roots: list[str] = Field(default_factory=lambda: [str(spin_home()), str(Path(".cache").absolute())])
    data_roots: list[str] = Field(default_factory=lambda: [str(spin_home()), str(Path(".cache").absolute())])
    max_body_bytes: int = Field(1 << 20, ge=1024)
    poll_interval_s: float = Field(2.0, gt=0)
    job_python: str = Field(sys.executable, description="Python that runs `-m jobs` on the Ray cluster.")
    job_retries: int = Field(1, ge=0, description="Resubmissions of an iteration whose job failed.")
    job_num_cpus: float = Field(0.0, ge=0, description="CPUs reserved for a job's driver.")
