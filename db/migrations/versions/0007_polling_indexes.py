"""indexes for polling at scale: a tenant's jobs by status, queue order, a job's events by id

GET /jobs?status=... read the tenant's jobs newest first and dropped those of other statuses (or,
on PostgreSQL, fetched every job of the status and sorted them); GET /jobs/{id}/events?after=...
fetched every event of the job and sorted them on PostgreSQL (SQLite's index on job_id already
ends in the rowid); the dashboard counted each queued job's place in its queue by reading the row
of every queued job. (job_id, id) replaces the index on job_id, and (tenant_id, id) already covers
the one on jobs.tenant_id, so both go.

Revision ID: 0007
Revises: 0006
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index('ix_jobs_tenant_status', 'jobs', ['tenant_id', 'status', 'id'])
    op.create_index('ix_jobs_queue_order', 'jobs', ['status', 'queue', 'priority', 'id'])
    op.drop_index('ix_jobs_tenant_id', table_name='jobs')
    op.create_index('ix_job_events_job_id_id', 'job_events', ['job_id', 'id'])
    op.drop_index('ix_job_events_job_id', table_name='job_events')


def downgrade() -> None:
    op.create_index('ix_job_events_job_id', 'job_events', ['job_id'])
    op.drop_index('ix_job_events_job_id_id', table_name='job_events')
    op.create_index('ix_jobs_tenant_id', 'jobs', ['tenant_id'])
    op.drop_index('ix_jobs_queue_order', table_name='jobs')
    op.drop_index('ix_jobs_tenant_status', table_name='jobs')
