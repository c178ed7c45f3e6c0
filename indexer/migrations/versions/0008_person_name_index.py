"""person lookup by name: keyed blind index of each patient's name with birth date

Revision ID: 0008
Revises: 0007

One row per (patient, kind): kind 'name' is HMAC(full normalised name + birth date),
'family' HMAC(family name + birth date), both under the blind-index key (security/pii.py).
No name is stored in clear. Patients registered before this revision are indexed on
their next intake, or by Registry.index_missing_names (it decrypts each name once).
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_name_index",
        sa.Column(
            "patient_id",
            sa.BigInteger(),
            sa.ForeignKey("patients.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("patient_id", "kind"),
        sa.CheckConstraint("kind IN ('name', 'family')", name="patient_name_index_kind"),
    )
    op.create_index("ix_patient_name_index_digest", "patient_name_index", ["digest"])


def downgrade() -> None:
    op.drop_index("ix_patient_name_index_digest", table_name="patient_name_index")
    op.drop_table("patient_name_index")
