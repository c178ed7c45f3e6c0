"""PostgreSQL: one cluster for the stack, with a database each for central Orthanc, the
indexer, Keycloak and the SeaweedFS filer, each open to its own role only."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from ..context import StackContext
from ..errors import PrerequisiteMissing, StackError
from .base import Service

PG_BIN = Path("/usr/lib/postgresql/15/bin")
CENTRAL_MIGRATIONS = Path("central-orthanc") / "migrations" / "alembic.ini"  # in the repo
MIGRATE_TIMEOUT_S = 120
# database name -> (owner role, secret holding its password)
DATABASES = {
    "orthanc_central": ("orthanc_central", "db_central"),
    "indexer": ("indexer", "db_indexer"),
    "keycloak": ("keycloak", "db_keycloak"),
    "seaweedfs": ("seaweedfs", "db_seaweedfs"),  # the filer's entries (postgres2 store)
}
# Server settings of every PostgreSQL of the stack (the small stack's one, and each HA node,
# whose Patroni writes them to its postgresql.conf).
SERVER_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "128MB",
    "log_min_messages": "warning",
    # No values in the log: an error's DETAIL ("Key (mrn)=(...) already exists"), the
    # failing statement's text and its bound parameters stay out.
    "log_error_verbosity": "terse",
    "log_min_error_statement": "panic",
    "log_parameter_max_length_on_error": "0",
    "log_parameter_max_length": "0",
}


def require_postgres_can_write(service: str, path: Path) -> None:
    """PrerequisiteMissing unless the `postgres` system user can write `path` (its parent
    directories traversable: a state directory under a private home is not)."""
    reachable = subprocess.run(
        ["/usr/bin/test", "-w", str(path)],
        user="postgres",
        group="postgres",
        check=False,
        timeout=10,
    )
    if reachable.returncode != 0:
        raise PrerequisiteMissing(
            service,
            f"the 'postgres' user cannot reach {path}: make its parent directories "
            "traversable (chmod o+x) or set STACK_DIR elsewhere",
        )


def private_database(database: str, role: str) -> list[sql.Composed]:
    """Statements leaving `database` to `role` alone. PostgreSQL gives PUBLIC (every role,
    present and future) CONNECT and TEMPORARY on a new database: without these the indexer's
    role could log in to Keycloak's database, and so on. Idempotent: run at every `up`, so a
    stack provisioned by an earlier release loses PUBLIC's grants too. The superuser (the
    stack's own provisioning) is not bound by grants."""
    db, owner = sql.Identifier(database), sql.Identifier(role)
    return [
        sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db),
        sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, owner),
    ]


def connect_superuser(ctx: StackContext, dbname: str = "postgres") -> psycopg.Connection:
    """The superuser, on the stack's `postgres` port (the small stack's PostgreSQL, or the
    HA topology's proxy front, i.e. its primary)."""
    return psycopg.connect(
        host="127.0.0.1",
        port=ctx.ports["postgres"],
        user="postgres",
        password=ctx.secrets["postgres_superuser"],
        dbname=dbname,
        connect_timeout=3,
        autocommit=True,
    )


def provision_databases(ctx: StackContext) -> None:
    """Create each component's role and database, open to that role only (idempotent)."""
    with connect_superuser(ctx) as conn:
        for database, (role, secret) in DATABASES.items():
            password = ctx.secrets[secret]
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(password)
                )
            )
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(role)
                    )
                )
            for statement in private_database(database, role):
                conn.execute(statement)


def migrate_central_tables(ctx: StackContext, service: str, log: Path) -> None:
    """Central's plugin tables to the Alembic head, once, before any central Orthanc
    starts (they only check the revision). As the role owning orthanc_central, so the
    tables keep that owner; concurrent runs wait on each other (an advisory lock).
    Failures are `service`'s, with alembic's output in `log`."""
    role, secret = DATABASES["orthanc_central"]
    password = quote(ctx.secrets[secret], safe="")
    url = (
        f"postgresql+psycopg://{role}:{password}@127.0.0.1:{ctx.ports['postgres']}/orthanc_central"
    )
    root = ctx.settings.repo_root
    argv = [
        str(ctx.settings.venv_bin / "alembic"),
        "-c",
        str(root / CENTRAL_MIGRATIONS),
        "upgrade",
        "head",
    ]
    with open(log, "ab") as out:
        try:
            subprocess.run(
                argv,
                check=True,
                timeout=MIGRATE_TIMEOUT_S,
                cwd=root,
                env=os.environ | {"IMGCLOUD_CENTRAL_DATABASE_URL": url},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        except subprocess.CalledProcessError as exc:
            raise StackError(
                service,
                f"migrating central's plugin tables (alembic -c {CENTRAL_MIGRATIONS} "
                f"upgrade head) failed with exit status {exc.returncode}",
                log,
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise StackError(
                service,
                f"migrating central's plugin tables took over {MIGRATE_TIMEOUT_S} s "
                "(another migration holding its lock?)",
                log,
            ) from exc


class Postgres(Service):
    name = "postgres"
    ports = ("postgres",)
    # SIGINT is PostgreSQL's "fast" shutdown: it does not wait for clients to disconnect.
    stop_signal = signal.SIGINT
    # Roles, databases and central's plugin tables are brought up to this release's even
    # when PostgreSQL was left running (an upgrade without `make down`).
    provision_when_running = True

    @property
    def data_dir(self) -> Path:
        return self.ctx.state / "pg" / "data"

    @property
    def socket_dir(self) -> Path:
        return self.ctx.state / "pg" / "run"

    def user(self) -> str:
        return "postgres"

    def prepare(self) -> None:
        if not (PG_BIN / "postgres").exists():
            raise PrerequisiteMissing(self.name, f"{PG_BIN}/postgres not found: run make install")
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PrerequisiteMissing(self.name, "system user 'postgres' missing") from exc
        top = self.ctx.state / "pg"
        for path in (top, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, pw.pw_uid, pw.pw_gid)
        require_postgres_can_write(self.name, top)
        if (self.data_dir / "PG_VERSION").exists():
            return
        if self.data_dir.exists():
            shutil.rmtree(self.data_dir)  # a half-made cluster from an interrupted initdb
        pwfile = top / "initdb.pw"
        pwfile.write_text(self.ctx.secrets["postgres_superuser"])
        os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        pwfile.chmod(0o600)
        try:
            subprocess.run(
                [
                    str(PG_BIN / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    "postgres",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "-E",
                    "UTF8",
                    "--locale=C.UTF-8",
                ],
                check=True,
                user="postgres",
                group="postgres",
                timeout=120,
                stdout=open(self.log, "ab"),
                stderr=subprocess.STDOUT,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise StackError(self.name, f"initdb failed: {exc}", self.log) from exc
        finally:
            pwfile.unlink(missing_ok=True)

    def argv(self) -> list[str]:
        argv = [
            str(PG_BIN / "postgres"),
            "-D",
            str(self.data_dir),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"port={self.ctx.ports['postgres']}",
            "-c",
            f"unix_socket_directories={self.socket_dir}",
        ]
        for key, value in SERVER_SETTINGS.items():
            argv += ["-c", f"{key}={value}"]
        return argv

    def _connect(self, dbname: str = "postgres") -> psycopg.Connection:
        return connect_superuser(self.ctx, dbname)

    def health(self) -> str | None:
        try:
            with self._connect() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as exc:
            return f"connect: {type(exc).__name__}"
        return None

    def after_healthy(self) -> None:
        """Create each component's role and database, then central's plugin tables."""
        self.provision()
        self.migrate_central()

    def provision(self) -> None:
        """Create each component's role and database, open to that role only (idempotent)."""
        provision_databases(self.ctx)

    def migrate_central(self) -> None:
        """Central's plugin tables to the Alembic head (migrate_central_tables)."""
        migrate_central_tables(self.ctx, self.name, self.log)
