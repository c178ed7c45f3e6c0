"""the gateway fleet: registry, rules documents and templates, stale alerts, releases and
upgrade campaigns (#15)

Heartbeats overwrite their gateway's one row (fillfactor 50, nothing indexed that a
heartbeat changes: HOT updates). Gateway alerts get a table of their own: `alerts` rows
are a person's access to a study (actor, study UID, encrypted reason).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 02:30:00
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSONB = postgresql.JSONB(astext_type=sa.Text())


def _now(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=nullable
    )


def upgrade() -> None:
    op.create_table(
        "fleet_templates",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("document", JSONB, nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        _now("updated_at"),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_fleet_templates")),
    )
    op.create_table(
        "fleet_gateways",
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("institution", sa.String(length=16), nullable=False),
        sa.Column("group", sa.String(length=64), nullable=True),
        _now("first_seen"),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("interval_s", sa.Float(), server_default="30", nullable=False),
        sa.Column("heartbeats", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("software_version", sa.String(length=64), nullable=True),
        sa.Column("release", sa.String(length=64), nullable=True),
        sa.Column("heartbeat", JSONB, nullable=True),
        sa.Column("rules_latest", sa.Integer(), nullable=True),
        sa.Column("rules_applied", sa.Integer(), nullable=True),
        sa.Column("rules_refused", sa.Integer(), nullable=True),
        sa.Column("rules_refused_reason", sa.String(length=500), nullable=True),
        sa.Column("template", sa.String(length=64), nullable=True),
        sa.Column("overrides", JSONB, nullable=True),
        sa.Column("upgrade_id", sa.BigInteger(), nullable=True),
        sa.Column("stale", sa.Boolean(), server_default="false", nullable=False),
        sa.Column("stale_since", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["template"],
            ["fleet_templates.name"],
            name=op.f("fk_fleet_gateways_template_fleet_templates"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f("pk_fleet_gateways")),
        postgresql_with={"fillfactor": 50},
    )
    op.create_index(
        op.f("ix_fleet_gateways_institution"), "fleet_gateways", ["institution"], unique=False
    )
    op.create_table(
        "fleet_rules",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("document", JSONB, nullable=False),
        sa.Column("author", sa.String(length=128), nullable=False),
        _now("created_at"),
        sa.Column("source", sa.String(length=80), nullable=False),
        sa.Column("reported", sa.String(length=16), nullable=True),
        sa.Column("reported_reason", sa.String(length=500), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["gateway_id"],
            ["fleet_gateways.gateway_id"],
            name=op.f("fk_fleet_rules_gateway_id_fleet_gateways"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_rules")),
        sa.UniqueConstraint("gateway_id", "version", name=op.f("uq_fleet_rules_gateway_id")),
    )
    op.create_table(
        "fleet_alerts",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("institution", sa.String(length=16), nullable=False),
        _now("raised_at"),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acknowledged_by", sa.String(length=128), nullable=True),
        sa.Column("acknowledged_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["gateway_id"],
            ["fleet_gateways.gateway_id"],
            name=op.f("fk_fleet_alerts_gateway_id_fleet_gateways"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_alerts")),
    )
    op.create_index(op.f("ix_fleet_alerts_gateway_id"), "fleet_alerts", ["gateway_id"])
    op.create_index(op.f("ix_fleet_alerts_institution"), "fleet_alerts", ["institution"])
    op.create_table(
        "fleet_releases",
        sa.Column("release", sa.String(length=64), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("manifest", JSONB, nullable=False),
        sa.Column("bundle", sa.LargeBinary(), nullable=False),
        sa.Column("uploaded_by", sa.String(length=128), nullable=False),
        _now("uploaded_at"),
        sa.PrimaryKeyConstraint("release", name=op.f("pk_fleet_releases")),
    )
    op.create_table(
        "fleet_upgrades",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("release", sa.String(length=64), nullable=False),
        sa.Column("target", JSONB, nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        _now("created_at"),
        sa.ForeignKeyConstraint(
            ["release"],
            ["fleet_releases.release"],
            name=op.f("fk_fleet_upgrades_release_fleet_releases"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fleet_upgrades")),
    )
    op.create_table(
        "fleet_upgrade_targets",
        sa.Column("upgrade_id", sa.BigInteger(), nullable=False),
        sa.Column("gateway_id", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="ordered", nullable=False),
        sa.Column("detail", sa.String(length=500), nullable=True),
        _now("updated_at"),
        sa.ForeignKeyConstraint(
            ["upgrade_id"],
            ["fleet_upgrades.id"],
            name=op.f("fk_fleet_upgrade_targets_upgrade_id_fleet_upgrades"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["gateway_id"],
            ["fleet_gateways.gateway_id"],
            name=op.f("fk_fleet_upgrade_targets_gateway_id_fleet_gateways"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("upgrade_id", "gateway_id", name=op.f("pk_fleet_upgrade_targets")),
    )


def downgrade() -> None:
    op.drop_table("fleet_upgrade_targets")
    op.drop_table("fleet_upgrades")
    op.drop_table("fleet_releases")
    op.drop_index(op.f("ix_fleet_alerts_institution"), table_name="fleet_alerts")
    op.drop_index(op.f("ix_fleet_alerts_gateway_id"), table_name="fleet_alerts")
    op.drop_table("fleet_alerts")
    op.drop_table("fleet_rules")
    op.drop_index(op.f("ix_fleet_gateways_institution"), table_name="fleet_gateways")
    op.drop_table("fleet_gateways")
    op.drop_table("fleet_templates")
