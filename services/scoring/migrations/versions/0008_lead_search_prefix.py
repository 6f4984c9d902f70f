"""scoring: indexes for the lead search (`ListLeadsRequest.q`, GET /v1/leads?q=): a case-insensitive
prefix of the email, first or last name, read as a range over lower(column). SQLite compares in code
point order, so lower(column) serves it (lower(email) is indexed since scoring_0003); PostgreSQL compares
in the database's collation, where a prefix is no range, so its indexes and the search use "C".
A later SQLite table rebuild (batch_alter_table) leaves expression indexes out: make these again then.

Revision ID: scoring_0008
Revises: scoring_0007
"""

from alembic import op

revision = "scoring_0008"
down_revision = "scoring_0007"
branch_labels = None
depends_on = None

SQLITE = {"ix_scoring_leads_first_name_lower": "first_name", "ix_scoring_leads_last_name_lower": "last_name"}
POSTGRESQL = {"ix_scoring_leads_email_prefix": "email", "ix_scoring_leads_first_name_prefix": "first_name",
              "ix_scoring_leads_last_name_prefix": "last_name"}


def _indexes() -> dict[str, str]:
    return POSTGRESQL if op.get_bind().dialect.name == "postgresql" else SQLITE


def upgrade() -> None:
    collate = ' COLLATE "C"' if op.get_bind().dialect.name == "postgresql" else ""
    for name, column in _indexes().items():
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON scoring_leads ((lower({column}){collate}))")


def downgrade() -> None:
    for name in _indexes():
        op.execute(f"DROP INDEX IF EXISTS {name}")
