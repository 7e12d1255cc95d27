"""model versions: where each checkpoint lies and which one is live

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30

Nothing is registered here: the first worker that starts on a store without a live
version registers its FINPULSE_MODEL_DIR as live; `finpulse promote` moves it later.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LIVE = sa.text("role = 'live'")


def upgrade() -> None:
    op.create_table("model_versions",
    sa.Column("model_version", sa.String(length=128), nullable=False),
    sa.Column("model_dir", sa.String(length=2048), nullable=False),
    sa.Column("role", sa.String(length=16), nullable=False),
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("model_version", name=op.f("pk_model_versions"))
    )
    op.create_index("uq_model_versions_live", "model_versions", ["role"], unique=True,
                    postgresql_where=LIVE, sqlite_where=LIVE)


def downgrade() -> None:
    op.drop_index("uq_model_versions_live", table_name="model_versions")
    op.drop_table("model_versions")
