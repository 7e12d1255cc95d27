"""alert subscriptions and alerts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("alerts",
    sa.Column("alert_id", sa.String(length=64), nullable=False),
    sa.Column("subscription_id", sa.String(length=36), nullable=False),
    sa.Column("subscription_name", sa.String(length=128), nullable=False),
    sa.Column("rule", sa.String(length=16), nullable=False),
    sa.Column("metric", sa.String(length=32), nullable=False),
    sa.Column("observed", sa.Float(), nullable=False),
    sa.Column("value", sa.Float(), nullable=False),
    sa.Column("threshold", sa.Float(), nullable=False),
    sa.Column("key_type", sa.String(length=16), nullable=False),
    sa.Column("key", sa.String(length=256), nullable=False),
    sa.Column("window_s", sa.Integer(), nullable=False),
    sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
    sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
    sa.Column("model_version", sa.String(length=128), nullable=False),
    sa.Column("volume", sa.Integer(), nullable=False),
    sa.Column("doc_id", sa.String(length=256), nullable=True),
    sa.Column("baseline_mean", sa.Float(), nullable=True),
    sa.Column("baseline_std", sa.Float(), nullable=True),
    sa.Column("fired_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("published", sa.Boolean(), nullable=False),
    sa.Column("delivery", sa.String(length=16), nullable=False),
    sa.Column("delivery_attempts", sa.Integer(), nullable=False),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint("alert_id", name=op.f("pk_alerts")),
    sa.UniqueConstraint("subscription_id", "key_type", "key", "window_s", "window_start", name="uq_alerts_once")
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index("ix_alerts_cooldown", ["subscription_id", "key_type", "key", "window_start"], unique=False)
        batch_op.create_index(batch_op.f("ix_alerts_fired_at"), ["fired_at"], unique=False)
        batch_op.create_index("ix_alerts_outbox", ["published", "delivery", "next_attempt_at"], unique=False)

    op.create_table("subscriptions",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("name", sa.String(length=128), nullable=False),
    sa.Column("key_type", sa.String(length=16), nullable=False),
    sa.Column("key", sa.String(length=256), nullable=False),
    sa.Column("window_s", sa.Integer(), nullable=False),
    sa.Column("rule", sa.JSON(), nullable=False),
    sa.Column("cooldown_s", sa.Integer(), nullable=False),
    sa.Column("webhook_url", sa.String(length=2048), nullable=True),
    sa.Column("webhook_secret", sa.String(length=256), nullable=True),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions"))
    )


def downgrade() -> None:
    op.drop_table("subscriptions")
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_outbox")
        batch_op.drop_index(batch_op.f("ix_alerts_fired_at"))
        batch_op.drop_index("ix_alerts_cooldown")

    op.drop_table("alerts")
