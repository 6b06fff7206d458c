"""Picks the recordings store that `auth_service.recordings.uri` names.

The only place that names a `RecordingStore` implementation:

    recordings:
      uri: "file://"               # default: <data_dir>/recordings
      uri: "file:///srv/recordings" # another directory
      uri: "s3://bucket/prefix?endpoint=https://s3.example.com&region=eu-west-1"
                                    # an S3-compatible bucket (s3_store.py); endpoint
                                    # and region are optional (AWS's defaults)
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from certgate.errors import BadParameter
from certgate.recording.directory_store import DirectoryStore
from certgate.recording.store import RecordingStore


def open_recording_store(uri: str, data_dir: Path) -> RecordingStore:
    parts = urlsplit(uri or "file://")
    if parts.scheme == "file":
        if parts.netloc:
            raise BadParameter(f'recordings uri "{uri}": use file:///absolute/path or file://')
        root = Path(parts.path) if parts.path else data_dir / "recordings"
        try:
            return DirectoryStore(root)
        except OSError as exc:
            raise BadParameter(f"cannot use {root} for recordings: {exc.strerror}") from exc
    if parts.scheme == "s3":
        # Imported only when named: a directory store never loads boto3.
        from certgate.recording.s3_store import parse_s3_uri

        return parse_s3_uri(uri)
    raise BadParameter(f'unknown recordings uri "{uri}": use file://, file:///path or s3://bucket')
