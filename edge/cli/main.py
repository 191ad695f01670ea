"""The ``headwater`` command."""

from __future__ import annotations

from pathlib import Path

import typer

from edge.cli import admin_cmds, consumer_cmds, daemons, discover_cmds, site_cmds, stream_cmds
from edge.cli.common import resolve_target

app = typer.Typer(
    name="headwater",
    help="Headwater: durable streams from sensors to the cloud.\n\n"
         "Start a local cluster with `headwater local`, then create a topic, produce and "
         "consume. Every command talks to the SC given by --sc, else $HEADWATER_SC, else the "
         "current profile (`headwater profile`), else 127.0.0.1:9003.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from edge import __version__

        typer.echo(f"headwater {__version__}")
        raise typer.Exit


@app.callback()
def _root(
    ctx: typer.Context,
    sc: str | None = typer.Option(None, "--sc", envvar=None,
                                  help="SC address HOST:PORT of the cluster to talk to "
                                  "(several SCs on etcd: H1:P1,H2:P2), or mdns:SITE (mdns "
                                  "when the LAN has one site) to find it on the LAN."),
    tls_ca: Path | None = typer.Option(None, help="CA bundle to verify the cluster with "
                                       "(switches TLS on)."),
    tls_cert: Path | None = typer.Option(None, help="Client certificate (mutual TLS)."),
    tls_key: Path | None = typer.Option(None, help="Key of the client certificate."),
    tls_server_name: str | None = typer.Option(None, help="Name expected in the server "
                                               "certificate (default the host)."),
    token_file: Path | None = typer.Option(None, help="File holding a token to log in "
                                           "with (`headwater token create`); else "
                                           "$HEADWATER_TOKEN, else the profile's."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    ctx.obj = resolve_target(sc, tls_ca, tls_cert, tls_key, tls_server_name, token_file)


app.add_typer(daemons.run_app, name="run")
app.add_typer(admin_cmds.topic_app, name="topic")
app.add_typer(admin_cmds.partition_app, name="partition")
app.add_typer(admin_cmds.spu_app, name="spu")
app.add_typer(admin_cmds.cluster_app, name="cluster")
app.add_typer(consumer_cmds.consumer_app, name="consumer")
app.add_typer(site_cmds.site_app, name="site")
app.add_typer(site_cmds.upstream_app, name="upstream")
app.command("local")(daemons.local)
app.command("ping")(daemons.ping)
app.command("discover")(discover_cmds.discover)
app.command("produce")(stream_cmds.produce)
app.command("consume")(stream_cmds.consume)


def _mount_optional() -> None:
    from edge.cli import acl_cmds, bench_cmds, demo, profile, sc_cmds, tls_cmds, token_cmds

    app.add_typer(bench_cmds.bench_app, name="bench")
    app.add_typer(profile.profile_app, name="profile")
    app.add_typer(tls_cmds.tls_app, name="tls")
    app.add_typer(acl_cmds.acl_app, name="acl")
    app.add_typer(token_cmds.token_app, name="token")
    app.add_typer(sc_cmds.sc_app, name="sc")
    app.command("demo")(demo.demo)
    import importlib.util

    # The gateway ships in the same distribution; while it is absent from a
    # source tree the rest of the CLI still works.
    if importlib.util.find_spec("gateway.cli") is not None:
        from gateway.cli import app as gateway_app

        app.add_typer(gateway_app, name="gateway")


_mount_optional()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
