"""journeys: definitions, lead state, enrolments, step runs, transitions, engagements, processed messages

Revision ID: journeys_0001
Revises:
"""

from alembic import op

from services.journeys.storage import Base

revision = "journeys_0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # The first revision creates the tables as declared; later revisions use explicit op.* changes.
    Base.metadata.create_all(op.get_bind())


def downgrade() -> None:
    Base.metadata.drop_all(op.get_bind())
