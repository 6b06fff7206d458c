"""`cgctl auth export|sign`: the cluster's CA public keys and host certificates for OpenSSH."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import click

from certgate.cli.cgctl._connect import api
from certgate.errors import BadParameter


@click.group("auth")
def auth() -> None:
    """Certificate authority operations."""


@auth.command("export")
@click.option(
    "--type",
    "kind",
    type=click.Choice(["user", "host", "tls-user", "tls-host"]),
    default="user",
    show_default=True,
    help="user: a TrustedUserCAKeys line for sshd; host: a known_hosts @cert-authority "
    "line; tls-*: the X.509 CA certificate.",
)
@click.pass_context
def export(ctx: click.Context, kind: str) -> None:
    """Print a CA's public key in the form OpenSSH (or TLS) expects."""
    click.echo(api(ctx).call("GET", f"/authorities/{kind}/export"), nl=False)


@auth.command("sign")
@click.option("--host", required=True, help="The node's name (as registered with cgctl create).")
@click.option(
    "--principals",
    default="",
    help="More names or addresses the certificate is valid for, comma-separated.",
)
@click.option("--ttl", default="720h", show_default=True, help="How long it is valid.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["openssh"]),
    default="openssh",
    show_default=True,
    help="openssh: a host key and certificate for a stock sshd.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the private key; the certificate goes to OUT-cert.pub.",
)
@click.option("--overwrite", is_flag=True, help="Replace files that exist.")
@click.pass_context
def sign(
    ctx: click.Context, host: str, principals: str, ttl: str, fmt: str, out: Path, overwrite: bool
) -> None:
    """Make a host key for an OpenSSH server and sign its certificate with the host CA.

    Prints the sshd_config lines that make the server an agentless node.
    """
    out = out.absolute()
    cert_path = out.with_name(out.name + "-cert.pub")
    pub_path = out.with_name(out.name + ".pub")
    if not overwrite:
        for path in (out, cert_path):
            if path.exists():
                raise BadParameter(f"{path} exists: pass --overwrite to replace it")
    names = [p.strip() for p in principals.split(",") if p.strip()]
    signed = api(ctx).call(
        "POST",
        "/agentless/host-certs",
        json={"host": host, "principals": names, "ttl": ttl},
    )
    _write(out, signed["private_key"], 0o600)
    _write(pub_path, signed["public_key"] + "\n", 0o644)
    _write(cert_path, signed["certificate"] + "\n", 0o644)
    user_ca = out.with_name("certgate_user_ca.pub")
    addr = (names or [host])[0]
    expires = datetime.fromisoformat(signed["expires"]).strftime("%Y-%m-%d %H:%M UTC")
    click.echo(
        f"Wrote the host key {out} (0600) and its certificate {cert_path},\n"
        f"valid for {', '.join(signed['principals'])} until {expires}.\n"
        "\n"
        "Trust the cluster's users and present the certificate — on the OpenSSH server:\n"
        "\n"
        f"  cgctl auth export --type=user > {user_ca}\n"
        "\n"
        "and add to its sshd_config, then reload sshd:\n"
        "\n"
        f"  HostKey {out}\n"
        f"  HostCertificate {cert_path}\n"
        f"  TrustedUserCAKeys {user_ca}\n"
        "\n"
        "Register it (cgctl create -f node.yaml):\n"
        "\n"
        "  kind: node\n"
        f"  metadata: {{name: {host}, labels: {{env: prod}}}}\n"
        f'  spec: {{sub_kind: openssh, addr: "{addr}:22"}}\n'
    )


def _write(path: Path, text: str, mode: int) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        os.chmod(path, mode)  # an existing file keeps its mode through O_CREAT
    except OSError as exc:
        raise BadParameter(f"cannot write {path}: {exc.strerror or exc}") from exc


def register(cli: click.Group) -> None:
    cli.add_command(auth)
