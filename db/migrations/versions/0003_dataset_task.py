"""datasets.task and datasets.column_map: which task's rows a dataset holds, and in which columns

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.add_column(sa.Column('task', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('column_map', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                                   nullable=False, server_default='{}'))
    # Every labelled dataset so far was uploaded for text classification; unlabelled ones are plain text.
    op.execute("UPDATE datasets SET task = 'text-classification' WHERE label_column IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('column_map')
        batch.drop_column('task')
