"""audit detail: method, filters, count, edge DICOM events; sealing in commit order

Revision ID: 0007
Revises: 0006

Rows are chained by `seal_seq`, which the sealer assigns as it finds committed rows, so a
row whose transaction commits after a higher id was sealed is sealed too (later). Rows
sealed before this revision keep their hashes: they get seal_seq in their old (id) order,
and their canonical form is unchanged (see services/audit.py, canonical()).
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Updates may only seal a row (fill its hashes and place once); every other column, present
# or added later, must stay as it was.
GUARD = """
CREATE OR REPLACE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF current_setting('imgcloud.audit_purge', true) = 'on' THEN RETURN OLD; END IF;
    RAISE EXCEPTION 'audit_events is append-only';
  END IF;
  IF OLD.hash IS NULL AND NEW.hash IS NOT NULL AND OLD.seal_seq IS NULL
     AND NEW.seal_seq IS NOT NULL
     AND (to_jsonb(NEW) - 'hash' - 'prev_hash' - 'seal_seq')
         = (to_jsonb(OLD) - 'hash' - 'prev_hash' - 'seal_seq') THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'audit_events is append-only';
END $$;
"""

OLD_GUARD = """
CREATE OR REPLACE FUNCTION audit_events_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    IF current_setting('imgcloud.audit_purge', true) = 'on' THEN RETURN OLD; END IF;
    RAISE EXCEPTION 'audit_events is append-only';
  END IF;
  IF OLD.hash IS NULL AND NEW.hash IS NOT NULL
     AND (NEW.id, NEW.at, NEW.actor, NEW.username, NEW.roles, NEW.institution,
          NEW.action, NEW.resource, NEW.purpose, NEW.source, NEW.outcome)
         IS NOT DISTINCT FROM
         (OLD.id, OLD.at, OLD.actor, OLD.username, OLD.roles, OLD.institution,
          OLD.action, OLD.resource, OLD.purpose, OLD.source, OLD.outcome) THEN
    RETURN NEW;
  END IF;
  RAISE EXCEPTION 'audit_events is append-only';
END $$;
"""

NEW_COLUMNS = (
    ("method", sa.String(length=16)),
    ("filters", sa.String(length=4000)),
    ("calling_ae", sa.String(length=16)),
    ("called_ae", sa.String(length=16)),
    ("answers", sa.Integer()),
    ("occurred_at", sa.DateTime(timezone=True)),
    ("event_id", sa.Uuid()),
    ("seal_seq", sa.BigInteger()),
)


def upgrade() -> None:
    for name, kind in NEW_COLUMNS:
        op.add_column("audit_events", sa.Column(name, kind, nullable=True))
    op.add_column(
        "audit_events",
        sa.Column("count", sa.Integer(), server_default=sa.text("1"), nullable=False),
    )
    op.alter_column("audit_events", "resource", type_=sa.String(length=512), existing_nullable=True)
    op.create_unique_constraint(op.f("uq_audit_events_event_id"), "audit_events", ["event_id"])
    op.create_unique_constraint(op.f("uq_audit_events_seal_seq"), "audit_events", ["seal_seq"])
    op.create_index(
        "ix_audit_events_unsealed",
        "audit_events",
        ["id"],
        postgresql_where=sa.text("hash IS NULL"),
    )
    op.add_column(
        "audit_anchor",
        sa.Column("last_purged_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    # The rows sealed so far, in the order they were chained.
    op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
    op.execute(
        "UPDATE audit_events SET seal_seq = ranked.n FROM "
        "(SELECT id, row_number() OVER (ORDER BY id) AS n FROM audit_events "
        " WHERE hash IS NOT NULL) AS ranked WHERE audit_events.id = ranked.id"
    )
    op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    op.execute(GUARD)


def downgrade() -> None:
    op.execute(OLD_GUARD)
    op.drop_column("audit_anchor", "last_purged_seq")
    op.drop_index("ix_audit_events_unsealed", table_name="audit_events")
    op.drop_constraint(op.f("uq_audit_events_seal_seq"), "audit_events", type_="unique")
    op.drop_constraint(op.f("uq_audit_events_event_id"), "audit_events", type_="unique")
    op.alter_column("audit_events", "resource", type_=sa.String(length=200), existing_nullable=True)
    op.drop_column("audit_events", "count")
    for name, _kind in NEW_COLUMNS:
        op.drop_column("audit_events", name)
