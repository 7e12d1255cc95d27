"""API tokens; webhook secrets encrypted at rest

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Existing webhook secrets are encrypted under the first key of FINPULSE_SECRET_KEYS when
it is set; otherwise they are marked `plain:` and still sign, until `finpulse secrets
rotate` (with a key set) encrypts them.
"""

import sqlalchemy as sa
from alembic import op

from worker.security.secret_box import PLAIN, SecretBox
from worker.settings import Settings

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE = sa.text("revoked_at IS NULL")


def upgrade() -> None:
    op.create_table("api_tokens",
    sa.Column("id", sa.String(length=36), nullable=False),
    sa.Column("name", sa.String(length=128), nullable=False),
    sa.Column("prefix", sa.String(length=16), nullable=False),
    sa.Column("token_hash", sa.String(length=64), nullable=False),
    sa.Column("scopes", sa.JSON(), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
    sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash"))
    )
    op.create_index("uq_api_tokens_active_name", "api_tokens", ["name"], unique=True,
                    postgresql_where=ACTIVE, sqlite_where=ACTIVE)

    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.alter_column("webhook_secret", existing_type=sa.String(length=256), type_=sa.String(length=1024),
                              existing_nullable=True)
    box = SecretBox(Settings.from_env().webhooks.secret_keys or [])
    _rewrite_secrets(box.seal if box.can_encrypt else lambda secret: PLAIN + secret)


def downgrade() -> None:
    box = SecretBox(Settings.from_env().webhooks.secret_keys or [])
    _rewrite_secrets(box.open)  # raises SecretUnreadable when no configured key opens one
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.alter_column("webhook_secret", existing_type=sa.String(length=1024), type_=sa.String(length=256),
                              existing_nullable=True)
    op.drop_index("uq_api_tokens_active_name", table_name="api_tokens")
    op.drop_table("api_tokens")


def _rewrite_secrets(rewrite) -> None:  # type: ignore[no-untyped-def]
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, webhook_secret FROM subscriptions WHERE webhook_secret IS NOT NULL")).all()
    for subscription_id, secret in rows:
        conn.execute(sa.text("UPDATE subscriptions SET webhook_secret = :secret WHERE id = :id"),
                     {"secret": rewrite(secret), "id": subscription_id})
