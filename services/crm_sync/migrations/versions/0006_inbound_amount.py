"""crm_sync: a won deal's revenue in its own column of crm_sync_inbound (`amount`), no longer in `state`'s
text ("closed_won 700.0" becomes state "closed_won", amount 700.0)

Revision ID: crm_sync_0006
Revises: crm_sync_0005
"""

import sqlalchemy as sa
from alembic import op

revision = "crm_sync_0006"
down_revision = "crm_sync_0005"
branch_labels = None
depends_on = None

_inbound = sa.table("crm_sync_inbound", sa.column("crm", sa.String), sa.column("kind", sa.String),
                    sa.column("object_id", sa.String), sa.column("state", sa.String),
                    sa.column("amount", sa.Float))
_KEY = ("crm", "kind", "object_id")


def _where(row: sa.Row) -> sa.ColumnElement[bool]:
    return sa.and_(*(_inbound.c[k] == row._mapping[k] for k in _KEY))


def upgrade() -> None:
    op.add_column("crm_sync_inbound", sa.Column("amount", sa.Float(), nullable=True))
    bind = op.get_bind()
    # Split in Python, not SQL: the text was Python's repr of a float, which float() reads back exactly
    # (SQLite and PostgreSQL have no one substring function or cast between them). Only won deals
    # have a space in their state, and they are few: one statement per row is fine.
    rows = bind.execute(sa.select(*(_inbound.c[k] for k in _KEY), _inbound.c.state)
                        .where(_inbound.c.kind == "deal", _inbound.c.state.like("% %"))).all()
    for row in rows:
        stage, _, revenue = row.state.partition(" ")
        bind.execute(sa.update(_inbound).where(_where(row)).values(state=stage, amount=float(revenue)))


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(*(_inbound.c[k] for k in _KEY), _inbound.c.state, _inbound.c.amount)
                        .where(_inbound.c.amount.is_not(None))).all()
    for row in rows:
        bind.execute(sa.update(_inbound).where(_where(row)).values(state=f"{row.state} {row.amount!r}"))
    with op.batch_alter_table("crm_sync_inbound") as batch:
        batch.drop_column("amount")
