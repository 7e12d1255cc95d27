"""event time on documents; document_keys and aggregates

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("event_time", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE documents SET event_time = COALESCE(published_at, scored_at)")
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("event_time", nullable=False)
        batch.create_index(op.f("ix_documents_event_time"), ["event_time"])
    op.create_table(
        "document_keys",
        sa.Column("doc_id", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("event_ts", sa.BigInteger(), nullable=False),
        sa.Column("sentiment_label", sa.String(16), nullable=False),
        sa.Column("sentiment_score", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("doc_id", "model_version", "key_type", "key", name=op.f("pk_document_keys")),
    )
    op.create_index("ix_document_keys_lookup", "document_keys", ["key_type", "key", "model_version", "event_ts"])
    op.create_table(
        "aggregates",
        sa.Column("window_s", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_type", sa.String(16), nullable=False),
        sa.Column("key", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("count_negative", sa.Integer(), nullable=False),
        sa.Column("count_neutral", sa.Integer(), nullable=False),
        sa.Column("count_positive", sa.Integer(), nullable=False),
        sa.Column("volume", sa.Integer(), nullable=False),
        sa.Column("score_sum", sa.Float(), nullable=False),
        sa.Column("mean_score", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("window_s", "window_start", "key_type", "key", "model_version", name=op.f("pk_aggregates")),
    )


def downgrade() -> None:
    op.drop_table("aggregates")
    op.drop_table("document_keys")
    with op.batch_alter_table("documents") as batch:
        batch.drop_index(op.f("ix_documents_event_time"))
        batch.drop_column("event_time")
