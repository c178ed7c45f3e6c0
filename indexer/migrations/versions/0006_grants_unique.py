"""one live grant per study, grantee institution, grantee user and kind

Before: identical grants piled up (16 concurrent pushes made 16), and revoking one left the
others open. Live duplicates already stored are merged first: the oldest row of each key
stays, lasting until the latest expiry of its copies (none if any had none); the copies are
revoked. Then a unique partial index keeps it so (INSERT ... ON CONFLICT reuses the row).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 06:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MERGE = """
WITH live AS (
    SELECT id, expires_at,
           first_value(id) OVER w AS keeper,
           bool_or(expires_at IS NULL) OVER k AS forever,
           max(expires_at) OVER k AS latest
    FROM grants
    WHERE revoked_at IS NULL
    WINDOW k AS (PARTITION BY study_instance_uid, institution_code, grantee_subject, kind),
           w AS (k ORDER BY id)
),
kept AS (
    UPDATE grants g
    SET expires_at = CASE WHEN live.forever THEN NULL ELSE live.latest END
    FROM live
    WHERE g.id = live.id AND live.id = live.keeper
)
UPDATE grants g SET revoked_at = now()
FROM live
WHERE g.id = live.id AND live.id <> live.keeper
"""


def upgrade() -> None:
    # PARTITION BY puts rows whose grantee_subject is NULL (the whole institution) together,
    # as NULLS NOT DISTINCT does in the index.
    op.execute(MERGE)
    op.create_index(
        "uq_grants_live",
        "grants",
        ["study_instance_uid", "institution_code", "grantee_subject", "kind"],
        unique=True,
        postgresql_where=sa.text("revoked_at IS NULL"),
        postgresql_nulls_not_distinct=True,
    )


def downgrade() -> None:
    op.drop_index("uq_grants_live", table_name="grants")
