"""`nurture migrate`: bring every service's schema to head once, before a deployment's replicas start
(they then run with NURTURE_MIGRATE=check and refuse a schema that is not their code's newest)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nurture.db import SchemaMismatch, check_schema, make_engine, migrate
from nurture.settings import SERVICES, load_settings

ROOT = Path(__file__).resolve().parent.parent


def migrations_dir(service: str) -> Path:
    return ROOT / "services" / service / "migrations"


def run(args: argparse.Namespace) -> int:
    settings = load_settings(data_dir=Path(args.data_dir) if args.data_dir else None)
    failed = 0
    for service in args.service or SERVICES:
        url = settings.database_url_for(service)
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(url, service=service)
        try:
            if args.check:
                revision = check_schema(engine, service=service, migrations_dir=migrations_dir(service))
            else:
                revision = migrate(engine, service=service, migrations_dir=migrations_dir(service))
            print(f"{service}: at {revision} (head)")
        except SchemaMismatch as exc:
            print(str(exc), file=sys.stderr)
            failed += 1
        finally:
            engine.dispose()
    return 1 if failed else 0


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("migrate", help="bring every service's database schema to head (once per deployment)")
    p.add_argument("--service", action="append", choices=SERVICES, metavar="SERVICE",
                   help="only this service (repeatable); default: all")
    p.add_argument("--check", action="store_true", help="change nothing: exit 1 unless every schema is at head")
    p.add_argument("--data-dir", help="where the embedded SQLite databases live (default ./data)")
