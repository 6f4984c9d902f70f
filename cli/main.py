"""The `nurture` console command (pyproject's entry point): `nurture up`, `nurture migrate`, `nurture dkim`,
`nurture simulate`."""

from __future__ import annotations

import argparse

from cli.migrate import add_parser as add_migrate_parser
from cli.migrate import run as run_migrate
from nurture.settings import SERVICES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nurture", description="BorderBridge Nurture")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the whole mesh on this machine")
    p_up.add_argument("--http-port", type=int, help="gateway port (default 8080)")
    p_up.add_argument("--port-offset", type=int, default=0, metavar="N",
                      help="add N to every port the mesh listens on (gateway, services, Redis, mail sink, "
                           "bounce receiver, CRM and ads emulators): a second mesh beside a running one")
    p_up.add_argument("--data-dir", help="where all state lives (default ./data)")
    p_up.add_argument("--clock", choices=["real", "virtual"], help="virtual: time moves only when told")
    p_up.add_argument("--smtp-url", help="deliver to this SMTP server instead of the local sink")
    p_up.add_argument("--api-key", help="the API key the gateway accepts")
    p_up.add_argument("--public-url", help="base URL of links in messages (default: the gateway)")
    p_up.add_argument("--bind-host", help="where services and gateway listen (default 127.0.0.1); beyond "
                                         "loopback every secret must be set (docs/SECURITY.md)")
    p_up.add_argument("--redis-cluster", type=_masters, metavar="N",
                      help="run an embedded Redis Cluster of N masters (ports 6390.., moved by --port-offset, and "
                           "their cluster bus ports +10000) instead of one Redis")
    p_up.add_argument("--redis-cluster-replicas", type=_cluster_replicas, metavar="R",
                      help="with --redis-cluster N: R replicas of each master (N*(1+R) nodes on consecutive ports), "
                           "so that a master's failure moves its slots to a replica")
    p_up.add_argument("--replicas", type=_replicas, metavar="N",
                      help="run N processes of every service (scoring, journeys, messaging, crm_sync, analytics; "
                           "the gateway, which holds the HTTP port, runs one); needs NURTURE_DATABASE_URL on "
                           "PostgreSQL")
    p_up.add_argument("--without", action="append", choices=SERVICES, metavar="SERVICE",
                      help="do not start this service (repeatable), e.g. to measure what it costs; the gateway "
                           "answers 503 for what it serves")
    add_migrate_parser(sub)
    sub.add_parser("dkim", help="print the DKIM TXT records to publish", add_help=False)
    sub.add_parser("simulate", help="run journeys for synthetic leads in virtual time", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "migrate":
        if rest:
            parser.error(f"unknown arguments: {' '.join(rest)}")
        return run_migrate(args)
    if args.command == "up":
        if rest:
            parser.error(f"unknown arguments: {' '.join(rest)}")
        from cli.up import up  # imported per command: `simulate` needs no supervisor, `up` no journeys

        return up(args)
    if args.command == "dkim":
        from cli.dkim import main as dkim_main

        return dkim_main(rest)
    from services.journeys import simulate_cli

    return int(simulate_cli.main(rest))


def _masters(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of masters, not {text!r}") from None
    if not 1 <= n <= 64:
        raise argparse.ArgumentTypeError(f"a local cluster has 1 to 64 masters, not {n}")
    return n


def _cluster_replicas(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of replicas per master, not {text!r}") from None
    if not 0 <= n <= 4:
        raise argparse.ArgumentTypeError(f"a local cluster has 0 to 4 replicas per master, not {n}")
    return n


def _replicas(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of replicas, not {text!r}") from None
    if not 1 <= n <= 16:
        raise argparse.ArgumentTypeError(f"one machine runs 1 to 16 replicas of a service, not {n}")
    return n


if __name__ == "__main__":
    raise SystemExit(main())
