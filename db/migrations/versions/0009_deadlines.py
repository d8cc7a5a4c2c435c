"""jobs.deadline and jobs.estimated_run_seconds: when a job must be done, and how long it should take

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('deadline', sa.DateTime(), nullable=True))
        batch.add_column(sa.Column('estimated_run_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('estimated_run_seconds')
        batch.drop_column('deadline')
