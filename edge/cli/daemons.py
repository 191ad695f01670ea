"""``headwater run sc|spu``, ``headwater local`` and ``headwater ping``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from edge.cli.common import DURABILITIES, LOG_FORMATS, LOG_LEVELS, fail, run, setup_logging, target
from edge.config import ConfigError, load_secret
from edge.protocol.errors import HeadwaterError

if TYPE_CHECKING:
    from edge.secret import ClusterSecret

run_app = typer.Typer(help="Run a Headwater daemon in the foreground (what systemd starts).",
                      no_args_is_help=True)

CONFIG_HELP = "TOML file with the daemon's settings; flags override it."
UPSTREAM_HELP = ("TOML file with an [upstream] table (from `headwater site register NAME "
                 "--export FILE` on the cloud): mirror upstream topics there.")
CHECK_HELP = "Validate the configuration, print the result and exit (0 valid, 2 invalid)."
LOG_FORMAT_HELP = ("text (with syslog priorities under systemd, for journalctl -p) or json "
                   "(one object a line).")
SITE_HELP = ("Site name: announce this node on the LAN (mDNS) so that the site's SPUs, "
             "gateways and clients find it without addresses.")
CLUSTER_KEY_HELP = ("File holding the cluster secret the SC and SPUs share (at least 32 "
                    "characters, mode 600): proves who calls a private port.")
INSECURE_HELP = ("Let any caller use the private ports, proven by nothing (development "
                 "only; logged as a warning).")


def _auth_overrides(secret: Path | None, insecure: bool) -> dict[str, Any]:
    return {"cluster_secret": load_secret(secret) if secret else None,
            "insecure_private": True if insecure else None}


BUDGET_HELP = ("Bytes of record data the SPU may hold (e.g. 2GiB); when full, each topic's "
               "budget_policy decides: refuse new writes, or drop the oldest data "
               "(data the cloud has goes first).")


METRICS_HELP = ("HOST:PORT for Prometheus to scrape (GET /metrics); off unless set. Keep it "
                "off public interfaces: 127.0.0.1 or a management network.")


def _metrics_at(port: int | None, offset: int) -> str | None:
    return None if port is None else f"127.0.0.1:{port + offset}"


def _budget(text: str | None) -> int | None:
    from edge.config import parse_size

    if text is None:
        return None
    if text.strip().isdigit():
        raise ConfigError(f"--disk-budget {text}: give a unit (examples: 512MiB, 2GiB)")
    return parse_size(text)


def _upstream(path: Path | None) -> Any:
    from edge.spu.config import UpstreamConfig

    return None if path is None else UpstreamConfig.from_toml(path)


def _lan_address() -> str | None:
    """This machine's first non-loopback address: what other machines can reach the
    SPUs of ``headwater local --host 0.0.0.0 --site`` on (they link to their SC on
    loopback, so the link's own address would be 127.0.0.1)."""
    from edge.discovery.mdns import interface_addresses

    found = [a for a in interface_addresses(()) if not a.startswith("127.")]
    return found[0] if found else None


def _default_data_dir(name: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "headwater" / name


@run_app.command("sc")
def run_sc(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    data_dir: Path | None = typer.Option(None, help="Where the metadata database lives."),
    public_addr: str | None = typer.Option(None, help="Client listener (default 0.0.0.0:9003)."),
    private_addr: str | None = typer.Option(None, help="SPU listener (default 0.0.0.0:9004)."),
    heartbeat_timeout_s: float | None = typer.Option(
        None, help="Seconds of SPU silence before it counts as offline (default 2)."),
    log_level: str | None = typer.Option(None, help="debug, info, warning or error.",
                                         autocompletion=LOG_LEVELS),
    site: str | None = typer.Option(None, "--site", help=SITE_HELP),
    metrics_addr: str | None = typer.Option(None, "--metrics-addr", help=METRICS_HELP),
    log_format: str = typer.Option("text", "--log-format", help=LOG_FORMAT_HELP,
                                   autocompletion=LOG_FORMATS),
    cluster_secret: Path | None = typer.Option(None, "--cluster-secret", help=CLUSTER_KEY_HELP),
    insecure_private: bool = typer.Option(False, "--insecure-private", help=INSECURE_HELP),
    check_config: bool = typer.Option(False, "--check-config", help=CHECK_HELP),
) -> None:
    """Run the Streaming Controller (control plane)."""
    from edge.sc.config import ScConfig

    overrides: dict[str, Any] = {"data_dir": data_dir, "public_addr": public_addr,
                                 "private_addr": private_addr, "log_level": log_level,
                                 "heartbeat_timeout_s": heartbeat_timeout_s, "site": site,
                                 "metrics_addr": metrics_addr}
    try:
        overrides.update(_auth_overrides(cluster_secret, insecure_private))
        cfg = (ScConfig.from_toml(config, **overrides) if config
               else ScConfig.from_dict({"data_dir": str(_default_data_dir("sc"))}, **overrides))
    except ConfigError as exc:
        fail(f"{config or 'sc config'}: {exc}", 2)
    if check_config:
        typer.echo(f"{config}: valid SC configuration")
        return
    setup_logging(cfg.log_level, daemon=True, log_format=log_format)

    async def main() -> None:
        from edge.daemon import serve

        if cfg.etcd is not None:  # one of several SCs on one etcd: active or standby
            from edge.sc.ha import HaSc

            ha = HaSc(cfg)
            await serve([ha], ready_text=lambda: f"SC on {ha.public_addr}, standing by or "
                        "active (metadata in etcd)")
            return
        from edge.sc.service import Sc

        sc = Sc(cfg)
        await serve([sc], ready_text=lambda: f"SC serving clients on {sc.public_addr}")

    _run_daemon(main)


def _run_daemon(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a daemon's main; what stops it from starting (its data directory in use,
    a port taken) is one line and exit 1, not a traceback."""
    try:
        asyncio.run(main())
    except HeadwaterError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot start: {exc}")


@run_app.command("spu")
def run_spu(
    config: Path | None = typer.Option(None, "--config", "-c", help=CONFIG_HELP),
    spu_id: int | None = typer.Option(None, "--id", help="Unique SPU number."),
    data_dir: Path | None = typer.Option(None, help="Where partitions and offsets live."),
    public_addr: str | None = typer.Option(None, help="Client listener (default 0.0.0.0:9005)."),
    private_addr: str | None = typer.Option(None, help="Peer listener (default 0.0.0.0:9006)."),
    sc: str | None = typer.Option(None, "--sc", help="SC private address HOST:PORT, or "
                                  "mdns:SITE to find it on the LAN (default 127.0.0.1:9004, "
                                  "or the SC of --site)."),
    durability: str | None = typer.Option(None, help="group, always or never (default group).",
                                          autocompletion=DURABILITIES),
    rack: str | None = typer.Option(None, help="Rack or site label used for placement."),
    log_level: str | None = typer.Option(None, help="debug, info, warning or error.",
                                         autocompletion=LOG_LEVELS),
    upstream: Path | None = typer.Option(None, "--upstream", help=UPSTREAM_HELP),
    disk_budget: str | None = typer.Option(None, "--disk-budget", help=BUDGET_HELP),
    metrics_addr: str | None = typer.Option(None, "--metrics-addr", help=METRICS_HELP),
    site: str | None = typer.Option(None, "--site", help=SITE_HELP),
    log_format: str = typer.Option("text", "--log-format", help=LOG_FORMAT_HELP,
                                   autocompletion=LOG_FORMATS),
    cluster_secret: Path | None = typer.Option(None, "--cluster-secret", help=CLUSTER_KEY_HELP),
    insecure_private: bool = typer.Option(False, "--insecure-private", help=INSECURE_HELP),
    check_config: bool = typer.Option(False, "--check-config", help=CHECK_HELP),
) -> None:
    """Run a Streaming Processing Unit (data plane)."""
    from edge.spu.config import SpuConfig

    overrides: dict[str, Any] = {"id": spu_id, "data_dir": data_dir, "public_addr": public_addr,
                                 "private_addr": private_addr, "sc": sc, "durability": durability,
                                 "rack": rack, "log_level": log_level, "site": site,
                                 "metrics_addr": metrics_addr}
    try:
        overrides["disk_budget"] = _budget(disk_budget)
        overrides["upstream"] = _upstream(upstream)
        overrides.update(_auth_overrides(cluster_secret, insecure_private))
        if config:
            cfg = SpuConfig.from_toml(config, **overrides)
        else:
            base = {"id": 1, "data_dir": str(_default_data_dir(f"spu-{spu_id or 1}"))}
            cfg = SpuConfig.from_dict(base, **overrides)
    except ConfigError as exc:
        fail(f"{config or 'spu config'}: {exc}", 2)
    if check_config:
        typer.echo(f"{config}: valid SPU configuration")
        return
    setup_logging(cfg.log_level, daemon=True, log_format=log_format)

    async def main() -> None:
        from edge.daemon import serve
        from edge.spu.service import Spu

        spu = Spu(cfg)
        await serve([spu], ready_text=lambda: f"SPU {cfg.id} serving clients on "
                    f"{spu.public_addr}")

    _run_daemon(main)


def local_secret(data_dir: Path) -> ClusterSecret:
    """The cluster secret of a development cluster: created in its data dir on first use."""
    from edge.secret import GENERATED_NAME, ClusterSecret

    try:
        return ClusterSecret.ensure(data_dir / GENERATED_NAME)
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def local(
    data_dir: Path = typer.Option(_default_data_dir("local"), help="Data directory."),
    sc_port: int = typer.Option(9003, help="SC client port (its SPU port is the next one)."),
    spu_port: int = typer.Option(9005, help="SPU client port (its peer port is the next one)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    spus: int = typer.Option(1, "--spus", help="SPUs to run, each on its own pair of ports "
                             "from --spu-port up (several SPUs allow replication -r > 1)."),
    durability: str = typer.Option("group", help="group, always or never.",
                                   autocompletion=DURABILITIES),
    log_level: str = typer.Option("warning", help="debug, info, warning or error.",
                                  autocompletion=LOG_LEVELS),
    upstream: Path | None = typer.Option(None, "--upstream", help=UPSTREAM_HELP),
    disk_budget: str | None = typer.Option(None, "--disk-budget", help=BUDGET_HELP +
                                           " (for each SPU)"),
    metrics_port: int | None = typer.Option(
        None, "--metrics-port", min=1, max=65535 - 17,
        help="Prometheus metrics on 127.0.0.1: the SC at this port, SPU n at this port + n."),
    site: str | None = typer.Option(None, "--site", help=SITE_HELP + " The SC and every "
                                    "SPU announce themselves (listen with --host 0.0.0.0 "
                                    "to be reachable from other machines)."),
) -> None:
    """Run an SC and SPUs until Ctrl-C (for development; one asyncio loop).

    On a multi-core machine or a Pi, run one `headwater run spu` process per core
    instead (see deploy/ansible), or use --spus for a replicated test cluster.
    """
    from edge.discovery.config import DiscoveryConfig
    from edge.sc.config import ScConfig
    from edge.spu.config import WILDCARD_HOSTS, SpuConfig

    if not 1 <= spus <= 16:
        fail("--spus must be 1..16", 2)
    try:
        uplink = _upstream(upstream)
        discovery = DiscoveryConfig(site=site)
        secret = local_secret(data_dir)
        sc_cfg = ScConfig(data_dir=data_dir / "sc", public_addr=f"{host}:{sc_port}",
                          private_addr=f"{host}:{sc_port + 1}", log_level=log_level,
                          discovery=discovery, cluster_secret=secret,
                          metrics_addr=_metrics_at(metrics_port, 0))
        # The SPUs of one process know where their SC is; only announcing needs the site.
        local_sc = f"{'127.0.0.1' if host in WILDCARD_HOSTS else host}:{sc_port + 1}"
        advertise = _lan_address() if host in WILDCARD_HOSTS and site else None
        spu_cfgs = [SpuConfig(id=i, data_dir=data_dir / f"spu-{i}",
                              public_addr=f"{host}:{spu_port + 2 * (i - 1)}",
                              private_addr=f"{host}:{spu_port + 2 * (i - 1) + 1}",
                              sc=local_sc, durability=durability,
                              advertise_public=advertise and
                              f"{advertise}:{spu_port + 2 * (i - 1)}",
                              advertise_private=advertise and
                              f"{advertise}:{spu_port + 2 * (i - 1) + 1}",
                              log_level=log_level, upstream=uplink, discovery=discovery,
                              cluster_secret=secret, disk_budget=_budget(disk_budget),
                              metrics_addr=_metrics_at(metrics_port, i))
                    for i in range(1, spus + 1)]
    except ConfigError as exc:
        fail(str(exc), 2)
    setup_logging(log_level)

    async def main() -> None:
        from edge.daemon import serve
        from edge.sc.service import Sc
        from edge.spu.service import Spu

        sc = Sc(sc_cfg)
        units = [Spu(cfg) for cfg in spu_cfgs]

        def banner() -> None:
            typer.echo(f"Headwater is running (data in {data_dir})")
            typer.echo(f"  SC     clients {sc.public_addr}   SPUs  {sc.private_addr}")
            for spu in units:
                typer.echo(f"  SPU {spu.cfg.id}  clients {spu.public_addr}   "
                           f"peers {spu.private_addr}")
            if uplink is not None:
                typer.echo(f"  upstream to {uplink.sc} as site {uplink.site}; mirror a topic "
                           f"with: headwater --sc {sc.public_addr} topic create NAME --upstream")
            if metrics_port is not None:
                typer.echo(f"  metrics  http://127.0.0.1:{metrics_port}/metrics (SC), "
                           f"port {metrics_port} + n for SPU n")
            if site is not None:
                typer.echo(f"  announced on the LAN as site {site}: headwater --sc mdns:{site} "
                           "...  and  headwater discover")
            typer.echo(f"Try:  headwater --sc {sc.public_addr} topic create greetings")
            typer.echo("Stop with Ctrl-C.")

        try:
            await serve([sc, *units], ready_text=lambda: f"local cluster on {sc.public_addr}",
                        on_ready=banner)
        except OSError as exc:
            fail(f"cannot listen: {exc} (another Headwater running? choose ports with "
                 "--sc-port/--spu-port)")

    asyncio.run(main())
    typer.echo("stopped; data flushed")


def ping(
    ctx: typer.Context,
    addr: str | None = typer.Argument(None, help="HOST:PORT of an SC or SPU (default the SC)."),
    count: int = typer.Option(1, "--count", "-n", help="Round trips to time."),
    timeout: float = typer.Option(5.0, help="Seconds to wait for an answer."),
) -> None:
    """Check that a Headwater SC or SPU answers (exit 0) and time the round trip."""
    t = target(ctx)
    where = addr or t.sc

    async def main() -> None:
        from edge.net.connection import ClientConnection
        from edge.protocol.messages import ApiKey

        async with asyncio.timeout(timeout):
            conn = ClientConnection(where, ssl_context=t.ssl(), server_hostname=t.server_name)
            await conn.connect(handshake=False)
            try:
                for _ in range(count):
                    start = time.perf_counter()
                    meta, _ = await conn.request(ApiKey.API_VERSIONS)
                    ms = (time.perf_counter() - start) * 1000
                    who = meta.get("role", "?")
                    extra = f" {meta['spu']}" if "spu" in meta else ""
                    typer.echo(f"{where}: {who}{extra} answered in {ms:.2f} ms")
            finally:
                await conn.close()

    try:
        run(main, what=f"ping {where}")
    except TimeoutError:
        fail(f"ping {where}: no answer within {timeout}s")
