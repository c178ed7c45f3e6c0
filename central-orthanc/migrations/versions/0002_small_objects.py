"""small attachments (content type 3, "DICOM until pixel data") held in PostgreSQL

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07

One row per small attachment, holding the same sealed envelope (AES-256-GCM or SM4-GCM,
bound to the object name and content type) the bucket would hold: ciphertext at rest. The
name sorts as bytes (COLLATE "C"), as S3 lists, so a listing merged with the bucket's keeps
one order. The envelope is incompressible: no compression attempt (STORAGE EXTERNAL), and
rows up to a page stay inline rather than in the TOAST table (toast_tuple_target).
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """CREATE TABLE IF NOT EXISTS imgcloud_small_objects (
            object_key  TEXT COLLATE "C" PRIMARY KEY,
            sealed      BYTEA NOT NULL,
            stored_at   TIMESTAMPTZ NOT NULL DEFAULT now()
        ) WITH (toast_tuple_target = 8160)"""
    )
    op.execute("ALTER TABLE imgcloud_small_objects ALTER COLUMN sealed SET STORAGE EXTERNAL")


def downgrade() -> None:
    # The table stays, as 0001's do: its rows are attachments Orthanc's index points to, and
    # dropping it would lose them. The previous release reads content type 3 from the bucket
    # only, so before going back copy the rows there (docs/archive.md); only the version
    # row goes.
    pass
