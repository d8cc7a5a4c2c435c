"""model_artifacts.tokenizer: the tokenizer a registered model was saved with

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_artifacts') as batch:
        batch.add_column(sa.Column('tokenizer', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                                   nullable=False, server_default='{}'))


def downgrade() -> None:
    with op.batch_alter_table('model_artifacts') as batch:
        batch.drop_column('tokenizer')
