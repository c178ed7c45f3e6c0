"""Alembic environment for central's plugin tables: the URL comes from the environment,
never from alembic.ini; the version table is our own (Orthanc owns the rest of the database);
one run at a time, under an advisory lock held for the run's one transaction."""

import os
import sys
from logging.config import fileConfig

from alembic import context
from imgcloud.central_schema import ADVISORY_LOCK, VERSION_TABLE
from sqlalchemy import create_engine, pool, text

URL_VARIABLE = "IMGCLOUD_CENTRAL_DATABASE_URL"

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def run_migrations_online() -> None:
    url = os.environ.get(URL_VARIABLE)
    if not url:
        sys.exit(f"{URL_VARIABLE} is not set (postgresql+psycopg://USER:PASSWORD@HOST/DATABASE)")
    engine = create_engine(url, poolclass=pool.NullPool, connect_args={"connect_timeout": 10})
    with engine.connect() as connection:
        # transactional DDL: every migration and the version row commit together, or none
        context.configure(connection=connection, version_table=VERSION_TABLE)
        with context.begin_transaction():
            # A second run waits here, then reads the version the first one committed.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
            context.run_migrations()


if context.is_offline_mode():
    sys.exit("central's migrations run online only (they take an advisory lock)")
run_migrations_online()
