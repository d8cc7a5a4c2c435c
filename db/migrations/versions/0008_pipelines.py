"""pipelines: jobs submitted together as steps, each waiting (status `waiting`) for the one it depends on

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table(
        'pipelines',
        sa.Column('id', BIG_ID, nullable=False),
        sa.Column('tenant_id', BIG_ID, nullable=False),
        sa.Column('name', sa.String(length=100), nullable=True),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_pipelines_tenant_id_tenants'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_pipelines')),
    )
    op.create_index(op.f('ix_pipelines_tenant_id'), 'pipelines', ['tenant_id'])
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('pipeline_id', BIG_ID, nullable=True))
        batch.add_column(sa.Column('pipeline_step', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('depends_on_id', BIG_ID, nullable=True))
        batch.create_foreign_key(op.f('fk_jobs_pipeline_id_pipelines'), 'pipelines', ['pipeline_id'], ['id'],
                                 ondelete='CASCADE')
        batch.create_foreign_key(op.f('fk_jobs_depends_on_id_jobs'), 'jobs', ['depends_on_id'], ['id'])
        batch.create_index(op.f('ix_jobs_pipeline_id'), ['pipeline_id'])
        batch.create_index(op.f('ix_jobs_depends_on_id'), ['depends_on_id'])


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index(op.f('ix_jobs_depends_on_id'))
        batch.drop_index(op.f('ix_jobs_pipeline_id'))
        batch.drop_constraint(op.f('fk_jobs_depends_on_id_jobs'), type_='foreignkey')
        batch.drop_constraint(op.f('fk_jobs_pipeline_id_pipelines'), type_='foreignkey')
        batch.drop_column('depends_on_id')
        batch.drop_column('pipeline_step')
        batch.drop_column('pipeline_id')
    op.drop_index(op.f('ix_pipelines_tenant_id'), table_name='pipelines')
    op.drop_table('pipelines')
