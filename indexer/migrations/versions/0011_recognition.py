"""互认 recognition decisions and their rollup (#16)

recognition_decisions: one current decision per prior exam and deciding institution.
recognition_rollup: the count of current decisions per month, institution and side (the
exam's institution, "exam", and the deciding one, "deciding"), modality and outcome,
kept in the decision's own transaction; the statistics read it (bench/recognition_bench.py
times them at 1 M decisions).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08 03:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "recognition_decisions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("exam_id", sa.BigInteger(), nullable=False),
        sa.Column("exam_institution", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("deciding_institution", sa.String(length=16), nullable=False),
        sa.Column("decided_by", sa.String(length=128), nullable=False),
        sa.Column("recognised", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("reason_text", sa.String(length=200), nullable=True),
        sa.Column("purpose", sa.String(length=200), nullable=False),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column(
            "decided_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["exam_id"], ["exams.id"], name=op.f("fk_recognition_decisions_exam_id_exams")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_recognition_decisions")),
        sa.UniqueConstraint(
            "exam_id",
            "deciding_institution",
            name=op.f("uq_recognition_decisions_exam_id"),
        ),
    )
    op.create_index("ix_recognition_decisions_decided_at", "recognition_decisions", ["decided_at"])
    op.create_table(
        "recognition_rollup",
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("side", sa.String(length=8), nullable=False),
        sa.Column("institution_code", sa.String(length=16), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("decisions", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "period",
            "side",
            "institution_code",
            "modality",
            "outcome",
            name=op.f("pk_recognition_rollup"),
        ),
    )


def downgrade() -> None:
    op.drop_table("recognition_rollup")
    op.drop_index("ix_recognition_decisions_decided_at", table_name="recognition_decisions")
    op.drop_table("recognition_decisions")
