"""ix_jobs_queue_order gains the kind: a job's place in line counts only the index

A job's place (higher priority first, then older) is counted among the queued jobs of its queue and
kind. Without the kind in the index, the count read the row of every queued job of the queue ahead
of it to check its kind: 33 ms for 33,000 jobs ahead among 100,000 queued on SQLite, against 8.8 ms
from the index alone. Every submission's response and GET /jobs/{id} of a queued job count it; the
claim's next-in-line query filters on the same columns.

Revision ID: 0011
Revises: 0010
"""
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index('ix_jobs_queue_order', table_name='jobs')
    op.create_index('ix_jobs_queue_order', 'jobs', ['status', 'queue', 'kind', 'priority', 'id'])


def downgrade() -> None:
    op.drop_index('ix_jobs_queue_order', table_name='jobs')
    op.create_index('ix_jobs_queue_order', 'jobs', ['status', 'queue', 'priority', 'id'])
