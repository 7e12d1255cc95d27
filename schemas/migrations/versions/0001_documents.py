"""documents: one scored document per (doc_id, model_version)

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("doc_id", sa.String(256), nullable=False),
        sa.Column("model_version", sa.String(128), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("lang", sa.String(16), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("url", sa.String(2048), nullable=True),
        sa.Column("author", sa.String(256), nullable=True),
        sa.Column("tickers", sa.JSON(), nullable=False),
        sa.Column("entities", sa.JSON(), nullable=False),
        sa.Column("sentiment_label", sa.String(16), nullable=False),
        sa.Column("sentiment_score", sa.Float(), nullable=False),
        sa.Column("sentiment_probs", sa.JSON(), nullable=False),
        sa.Column("topic_label", sa.String(128), nullable=False),
        sa.Column("topic_probs", sa.JSON(), nullable=False),
        sa.Column("scored_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.PrimaryKeyConstraint("doc_id", "model_version", name=op.f("pk_documents")),
    )
    for column in ("source", "lang", "published_at", "sentiment_label", "topic_label"):
        op.create_index(op.f(f"ix_documents_{column}"), "documents", [column])


def downgrade() -> None:
    op.drop_table("documents")
