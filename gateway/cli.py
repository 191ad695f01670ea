"""``headwater gateway ...``: run the gateway, check its config, read its status.

A typer sub-app; the main CLI mounts it as ``headwater gateway`` and
``python -m gateway`` runs it on its own. It parses and prints; the work is in
``gateway.runner`` and ``gateway.status``.
"""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from edge.cli.common import LOG_LEVELS, fail, print_json, print_table, setup_logging
from edge.config import ConfigError
from gateway.config import GatewayConfig, StatusConfig, load_config
from gateway.status import read_status, table_rows

app = typer.Typer(
    name="gateway",
    help="Bridge devices (serial ports, an MQTT broker) into Headwater topics.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

ConfigPath = Annotated[Path, typer.Option(
    "--config", "-c", envvar="HEADWATER_GATEWAY_CONFIG", help="The gateway's TOML config.",
)]
DEFAULT_CONFIG = Path("gateway.toml")


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


def _load(path: Path) -> GatewayConfig:
    try:
        return load_config(path)
    except ConfigError as exc:
        fail(f"{path}: {exc}", 2)


def _summary(cfg: GatewayConfig) -> str:
    parts = [f"{len(cfg.serial)} serial port(s)"] if cfg.serial else []
    if cfg.mqtt is not None:
        parts.append(f"MQTT {cfg.mqtt.host}:{cfg.mqtt.effective_port} "
                     f"with {len(cfg.mqtt.rules)} rule(s)")
    return f"SC {cfg.sc}; " + ", ".join(parts) + f"; status on {cfg.status.listen}"


@app.command()
def run(
    config: ConfigPath = DEFAULT_CONFIG,
    check_config: Annotated[bool, typer.Option(
        "--check-config", help="Validate the config, print a summary and exit.",
    )] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.",
                                            autocompletion=LOG_LEVELS)] = "info",
) -> None:
    """Run every configured bridge until SIGTERM or SIGINT."""
    cfg = _load(config)
    if check_config:
        typer.echo(f"{config}: OK ({_summary(cfg)})")
        return
    setup_logging(log_level, daemon=True)
    try:
        # Imported here: the bridges pull in aiomqtt, which `headwater run spu` and
        # every other command must not pay for in memory and start-up time.
        from gateway.runner import Gateway

        asyncio.run(Gateway(cfg).run())
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def status(
    config: ConfigPath = DEFAULT_CONFIG,
    listen: Annotated[str | None, typer.Option(
        help="Status endpoint (HOST:PORT or unix:PATH) [default: from the config].",
    )] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = (
        Output.TABLE
    ),
) -> None:
    """Show the counters of a running gateway."""
    if listen is None:
        listen = _load(config).status.listen if config.exists() else StatusConfig().listen
    try:
        data = asyncio.run(read_status(listen))
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        fail(f"cannot read the gateway status at {listen}: {exc or type(exc).__name__} "
             "(is `headwater gateway run` running?)")
    if output is Output.JSON:
        print_json(data)
        return
    headers, rows = table_rows(data)
    print_table(rows, headers)
    typer.echo(f"\npid {data.get('pid')}, up {data.get('uptime_s')} s, SC {data.get('sc')}")


def main() -> None:
    app(prog_name="python -m gateway")
