"""central's plugin tables as the previous release's plugins created them

Revision ID: 0001
Revises:
Create Date: 2026-12-04

Until this revision each central Orthanc ran this DDL at every start. It is written to adopt
a database that release made (IF NOT EXISTS throughout), since sites upgrade in place: a
database from before gets no change but the version row; a new one gets the tables.
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATEMENTS = (
    # SHA-256 of every instance as central received it (imgcloud.instance_hashes)
    """CREATE TABLE IF NOT EXISTS imgcloud_instance_sha256 (
        orthanc_id  TEXT PRIMARY KEY,
        sha256      CHAR(64) NOT NULL,
        stored_at   TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
    # cross-hospital pushes (imgcloud.pushes)
    """CREATE TABLE IF NOT EXISTS imgcloud_pushes (
        push_id             UUID PRIMARY KEY,
        study_instance_uid  TEXT NOT NULL,
        from_institution    TEXT NOT NULL,
        to_institution      TEXT NOT NULL,
        deliver_to          TEXT,
        requested_by        TEXT,
        state               TEXT NOT NULL,
        detail              TEXT,
        instances           INTEGER,
        created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
        updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
        delivered_at        TIMESTAMPTZ
    )""",
    """CREATE INDEX IF NOT EXISTS imgcloud_pushes_to_state
        ON imgcloud_pushes (to_institution, state)""",
    # Open duplicates a release before the unique index made are closed first: a claimed one
    # stays (its edge is at work), else the oldest; the others become `failed`, naming the
    # push that stays. Nothing to do on a database that already has the index.
    """UPDATE imgcloud_pushes p SET state = 'failed', updated_at = now(),
           detail = 'superseded by push ' || k.keeper || ' (one open push per study and receiver)'
    FROM (SELECT push_id, first_value(push_id) OVER (
              PARTITION BY study_instance_uid, to_institution
              ORDER BY state = 'claimed' DESC, created_at, push_id) AS keeper
          FROM imgcloud_pushes WHERE state IN ('pending', 'claimed')) k
    WHERE p.push_id = k.push_id AND k.push_id <> k.keeper""",
    # one open push per study and receiver: PushRegistry.create is INSERT ... ON CONFLICT
    """CREATE UNIQUE INDEX IF NOT EXISTS imgcloud_pushes_one_open
        ON imgcloud_pushes (study_instance_uid, to_institution)
        WHERE state IN ('pending', 'claimed')""",
)


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    # The tables stay: the previous release creates them itself and works on them as they
    # are (docs/upgrade.md, Rollback), and dropping them would lose every instance hash and
    # push. Only the version row goes.
    pass
