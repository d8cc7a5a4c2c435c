"""queue_line_changes: how many jobs wait in each line, kept by triggers, so a place in line is not counted

A queued job's place (and the work ahead of it, for its expected start) was counted over every queued job
ahead of it: one index entry each, 13 ms behind 100,000 queued jobs on SQLite and 29 ms of PostgreSQL's
CPU, in every submission's answer and every GET of a queued job. Triggers on jobs now write, for each
change that adds a job to a line (queue, kind, priority) or takes one out, a row saying so; a line's
sums tell how many wait in it, and only the jobs of the job's own priority on its shorter side are
counted (`db.services.lines`). Rows, not one counter per line: concurrent transactions never wait on
each other's counter, and so can never deadlock over two of them.

A later migration that rebuilds the jobs table on SQLite (`batch_alter_table`) drops its triggers and must
create them again (`create_triggers`); tests/db/test_queue_lines.py fails if they are missing.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

COLUMNS = "queue, kind, priority, queued, seconds, unknown"
# A change that matters: the job joins or leaves the queued jobs, or moves between lines, or its estimate changes.
MOVED_SQLITE = ("NEW.queue IS NOT OLD.queue OR NEW.kind IS NOT OLD.kind OR NEW.priority IS NOT OLD.priority "
                "OR NEW.estimated_run_seconds IS NOT OLD.estimated_run_seconds")
MOVED_POSTGRES = MOVED_SQLITE.replace("IS NOT", "IS DISTINCT FROM")


def _row(record: str, sign: str, postgres: bool) -> str:
    unknown = f"({record}.estimated_run_seconds IS NULL)" + ("::int" if postgres else "")
    return (f"INSERT INTO queue_line_changes ({COLUMNS}) VALUES ({record}.queue, {record}.kind, {record}.priority, "
            f"{sign}1, {sign}COALESCE({record}.estimated_run_seconds, 0), {sign}{unknown});")


def create_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""
            CREATE FUNCTION jobs_queue_line_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF TG_OP = 'DELETE' THEN
                    IF OLD.status = 'queued' THEN {_row('OLD', '-', True)} END IF;
                ELSIF TG_OP = 'INSERT' THEN
                    IF NEW.status = 'queued' THEN {_row('NEW', '', True)} END IF;
                ELSIF OLD.status = 'queued' AND NEW.status = 'queued' THEN
                    IF {MOVED_POSTGRES} THEN {_row('OLD', '-', True)} {_row('NEW', '', True)} END IF;
                ELSIF OLD.status = 'queued' THEN {_row('OLD', '-', True)}
                ELSIF NEW.status = 'queued' THEN {_row('NEW', '', True)}
                END IF;
                RETURN NULL;
            END $$""")
        op.execute("CREATE TRIGGER jobs_queue_line AFTER INSERT OR UPDATE OR DELETE ON jobs "
                   "FOR EACH ROW EXECUTE FUNCTION jobs_queue_line_change()")
        return
    watched = "status, queue, kind, priority, estimated_run_seconds"
    op.execute(f"CREATE TRIGGER jobs_queue_line_insert AFTER INSERT ON jobs WHEN NEW.status = 'queued' "
               f"BEGIN {_row('NEW', '', False)} END")
    op.execute(f"CREATE TRIGGER jobs_queue_line_delete AFTER DELETE ON jobs WHEN OLD.status = 'queued' "
               f"BEGIN {_row('OLD', '-', False)} END")
    op.execute(f"CREATE TRIGGER jobs_queue_line_leave AFTER UPDATE OF {watched} ON jobs "
               f"WHEN OLD.status = 'queued' AND (NEW.status IS NOT 'queued' OR {MOVED_SQLITE}) "
               f"BEGIN {_row('OLD', '-', False)} END")
    op.execute(f"CREATE TRIGGER jobs_queue_line_join AFTER UPDATE OF {watched} ON jobs "
               f"WHEN NEW.status = 'queued' AND (OLD.status IS NOT 'queued' OR {MOVED_SQLITE}) "
               f"BEGIN {_row('NEW', '', False)} END")


def drop_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS jobs_queue_line ON jobs")
        op.execute("DROP FUNCTION IF EXISTS jobs_queue_line_change()")
        return
    for name in ("insert", "delete", "leave", "join"):
        op.execute(f"DROP TRIGGER IF EXISTS jobs_queue_line_{name}")


def upgrade() -> None:
    op.create_table(
        'queue_line_changes',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('queue', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=32), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('queued', sa.BigInteger(), nullable=False),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('unknown', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_queue_line_changes_line', 'queue_line_changes',
                    ['queue', 'kind', 'priority', 'queued', 'seconds', 'unknown'])
    if op.get_bind().dialect.name == "postgresql":  # no job may change between the count and the triggers
        op.execute("LOCK TABLE jobs IN SHARE ROW EXCLUSIVE MODE")
    op.execute(f"INSERT INTO queue_line_changes ({COLUMNS}) SELECT queue, kind, priority, count(*), "
               "COALESCE(sum(estimated_run_seconds), 0), count(*) - count(estimated_run_seconds) "
               "FROM jobs WHERE status = 'queued' GROUP BY queue, kind, priority")
    create_triggers()


def downgrade() -> None:
    drop_triggers()
    op.drop_index('ix_queue_line_changes_line', table_name='queue_line_changes')
    op.drop_table('queue_line_changes')
