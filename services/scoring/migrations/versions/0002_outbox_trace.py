"""scoring: the outbox keeps the trace carrier beside the message (published as a stream field)

Revision ID: scoring_0002
Revises: scoring_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "scoring_0002"
down_revision = "scoring_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Revision 0001 creates the tables as tables.py declares them at head, so on a new database
    # the column is already there; a database made before this revision gets it here.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("scoring_outbox")}
    if "trace" not in columns:
        op.add_column("scoring_outbox", sa.Column("trace", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("scoring_outbox", "trace")
