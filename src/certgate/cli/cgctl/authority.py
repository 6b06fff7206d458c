"""`cgctl auth export|sign`: the cluster's CA public keys, host certificates for OpenSSH,
and identities for plugins and scripts (`sign --user`)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import click

from certgate.cli.cgctl._connect import api
from certgate.cli.common import DURATION
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
@click.option("--host", help="The node's name (as registered with cgctl create).")
@click.option(
    "--user",
    help="A user to make an identity for (a plugin's or a script's), instead of --host.",
)
@click.option(
    "--principals",
    default="",
    help="More names or addresses the certificate is valid for, comma-separated (--host).",
)
@click.option(
    "--ttl",
    type=DURATION,
    default=None,
    help="How long it is valid (default 720h; --user: capped by the user's roles).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["openssh"]),
    default="openssh",
    show_default=True,
    help="openssh: a host key and certificate for a stock sshd (--host).",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=Path),
    help="--host: where to write the private key (the certificate goes to OUT-cert.pub); "
    "--user: the identity directory to write.",
)
@click.option("--overwrite", is_flag=True, help="Replace files that exist.")
@click.pass_context
def sign(
    ctx: click.Context,
    host: str | None,
    user: str | None,
    principals: str,
    ttl: str | None,
    fmt: str,
    out: Path,
    overwrite: bool,
) -> None:
    """Sign certificates: a host's for OpenSSH (--host) or a user's identity (--user)."""
    if bool(host) == bool(user):
        raise BadParameter("name either --host or --user")
    if user:
        _sign_user(ctx, user, ttl or "720h", out, overwrite)
    else:
        assert host is not None
        _sign_host(ctx, host, principals, ttl or "720h", out, overwrite)


def _sign_user(ctx: click.Context, user: str, ttl: str, out: Path, overwrite: bool) -> None:
    out = out.absolute()
    if out.exists() and not out.is_dir():
        raise BadParameter(f"{out} is a file: --user writes an identity directory")
    if (out / "bundle.json").exists() and not overwrite:
        raise BadParameter(f"{out} holds an identity: pass --overwrite to replace it")
    from certgate.client.identities import sign_user_identity  # cryptography: only here

    bundle = sign_user_identity(api(ctx), user, ttl, out)
    identity = bundle.identity
    click.echo(
        f"Wrote an identity for {identity.username} (roles {', '.join(identity.roles) or '-'}) "
        f"to {out},\nvalid until {identity.expires:%Y-%m-%d %H:%M} UTC.\n"
        "\n"
        "Point a plugin's config at it (docs/plugins.md):\n"
        "\n"
        f"  identity: {out}\n"
    )


def _sign_host(
    ctx: click.Context, host: str, principals: str, ttl: str, out: Path, overwrite: bool
) -> None:
    """Make a host key for an OpenSSH server and sign its certificate with the host CA.

    Prints the sshd_config lines that make the server an agentless node.
    """
    out = out.absolute()
    if out.is_dir():
        raise BadParameter(f"{out} is a directory: --host writes a key file")
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
