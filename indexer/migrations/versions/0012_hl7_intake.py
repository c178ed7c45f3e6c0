"""HL7 v2 intake: the message journal (idempotent redelivery, sequence problems kept for
an operator) and the record of A40 merges

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08 03:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("institution_code", sa.String(length=16), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column("message_type", sa.String(length=16), nullable=False),
        sa.Column("content_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("outcome", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=True),
        sa.Column("ack", sa.Text(), nullable=True),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("raw_enc", sa.LargeBinary(), nullable=True),
        sa.Column(
            "received_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["institution_code"], ["institutions.institution_code"],
            name=op.f("fk_hl7_messages_institution_code_institutions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_messages")),
        sa.UniqueConstraint(
            "institution_code", "control_id",
            name=op.f("uq_hl7_messages_institution_code"),
        ),
    )  # fmt: skip
    op.create_index(
        "ix_hl7_messages_problems",
        "hl7_messages",
        ["institution_code", "received_at"],
        postgresql_where=sa.text("outcome = 'problem'"),
    )
    op.create_table(
        "hl7_merges",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("institution_code", sa.String(length=16), nullable=False),
        sa.Column("prior_mrn", sa.String(length=64), nullable=False),
        sa.Column("surviving_mrn", sa.String(length=64), nullable=False),
        sa.Column("exams_moved", sa.BigInteger(), nullable=False),
        sa.Column("control_id", sa.String(length=199), nullable=False),
        sa.Column(
            "merged_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["institution_code"], ["institutions.institution_code"],
            name=op.f("fk_hl7_merges_institution_code_institutions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_merges")),
    )  # fmt: skip
    op.create_index(op.f("ix_hl7_merges_prior_mrn"), "hl7_merges", ["prior_mrn"])


def downgrade() -> None:
    op.drop_index(op.f("ix_hl7_merges_prior_mrn"), table_name="hl7_merges")
    op.drop_table("hl7_merges")
    op.drop_index("ix_hl7_messages_problems", table_name="hl7_messages")
    op.drop_table("hl7_messages")
