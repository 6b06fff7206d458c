"""`cgsh recordings ls` and `cgsh play ID`: find and replay recorded sessions."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from certgate.cli.common import FORMAT, print_json, table

# The client modules (httpx, cryptography, pydantic) are imported in the commands.
if TYPE_CHECKING:
    from certgate.api.recording import RecordingInfo
    from certgate.client.recordings import Recording


@click.group()
def recordings() -> None:
    """Recorded sessions."""


@recordings.command("ls")
@click.option("--since", help="Sessions started after this: a duration ago (1h) or RFC 3339.")
@click.option("--user", help="Only sessions of this user.")
@click.option("--node", help="Only sessions on this node.")
@click.option("--limit", default=1000, show_default=True, help="At most this many.")
@FORMAT
def ls(since: str | None, user: str | None, node: str | None, limit: int, fmt: str) -> None:
    """List recorded sessions, newest first: yours, or everyone's if your roles allow."""
    from certgate.client.cluster import connect_profile
    from certgate.client.recordings import format_seconds, list_recordings

    api = connect_profile()
    try:
        found = list_recordings(api, since=since, user=user, node=node, limit=limit)
    finally:
        api.close()
    if fmt == "json":
        print_json([info.to_dict() for info in found])
        return
    rows = [
        (
            info.id,
            info.user,
            info.login,
            info.node,
            info.start.strftime("%Y-%m-%d %H:%M:%S"),
            format_seconds(info.duration) + _cut_short(info),
            info.session_kind if info.command is None else f"exec: {info.command}",
        )
        for info in found
    ]
    click.echo(table(["ID", "User", "Login", "Node", "Start", "Duration", "Session"], rows))


@click.command("play")
@click.argument("recording_id", metavar="ID")
@click.option("--speed", default=1.0, show_default=True, type=float, help="Playback speed.")
@click.option("--skip-idle", is_flag=True, help="Shorten pauses to half a second.")
@click.option(
    "--raw",
    is_flag=True,
    help="Write the output exactly as recorded, escape sequences that set the clipboard"
    " or make the terminal answer included.",
)
@FORMAT
def play_command(recording_id: str, speed: float, skip_idle: bool, raw: bool, fmt: str) -> None:
    """Replay a recorded session in this terminal at its original timing.

    What the recorded user could aim at your terminal is left out: clipboard writes
    (OSC 52), queries the terminal would answer into your shell, device control strings
    (--raw keeps them). --format=json prints the recording's events instead. A damaged
    recording plays up to the damage, then says where it stops (exit status 1).
    """
    if speed <= 0:
        raise click.BadParameter("must be more than 0", param_hint="--speed")
    from certgate.client.cluster import connect_profile
    from certgate.client.recordings import fetch_recording

    api = connect_profile()
    try:
        recording = fetch_recording(api, recording_id)
    finally:
        api.close()
    try:
        damage = _show(recording, fmt, speed, skip_idle, raw)
    finally:
        recording.close()
    if damage:
        click.echo(damage, err=True)
        sys.exit(1)


def _show(recording: Recording, fmt: str, speed: float, skip_idle: bool, raw: bool) -> str | None:
    """Print or play `recording`; returns where it is damaged, if it is."""
    from certgate.client.recordings import as_json, play
    from certgate.client.terminal_filter import TerminalOutputFilter

    if fmt == "json":
        document = as_json(recording)
        print_json(document)
        damage: str | None = document["damage"]
        return damage
    reader = recording.reader()
    out = sys.stdout.buffer

    keep = None if raw else TerminalOutputFilter().feed

    def write(text: str) -> None:
        out.write((text if keep is None else keep(text)).encode("utf-8", errors="replace"))
        out.flush()

    play(reader.events(), write, speed=speed, skip_idle=skip_idle)
    return reader.damage


def _cut_short(info: RecordingInfo) -> str:
    """Why the recording stops before its session did, if it does."""
    if info.truncated:
        return " (truncated: its node keeps the rest)"
    return " (incomplete)" if info.incomplete else ""
