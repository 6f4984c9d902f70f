"""scoring: a lead's locale holds a BCP 47 tag of up to 35 characters, the profile's own limit
(`MAX_LENGTHS["locale"]`); 16 made a longer tag (`zh-Hant-TW-x-...`) fail the write on PostgreSQL, which
enforces the width SQLite ignores: a 500 on POST /v1/leads

Revision ID: scoring_0007
Revises: scoring_0006
"""

import sqlalchemy as sa
from alembic import op

revision = "scoring_0007"
down_revision = "scoring_0006"
branch_labels = None
depends_on = None


def _width(old: int, new: int) -> None:
    # SQLite does not enforce a VARCHAR's width, and its batch mode would rebuild the table without
    # the expression index on lower(email) (reflection skips it): there is nothing to change there.
    if op.get_bind().dialect.name == "sqlite":
        return
    op.alter_column("scoring_leads", "locale", existing_type=sa.String(length=old), type_=sa.String(length=new),
                    existing_nullable=True)


def upgrade() -> None:
    _width(16, 35)


def downgrade() -> None:
    _width(35, 16)
