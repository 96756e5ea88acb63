"""WebDataset tar shards with reproducible bytes, written and read with the stdlib.

A sample is a key and its files by extension ("png", "txt", "json"); in the tar
they are ``<key>.<ext>``, members sorted, every header fixed (mtime 0, uid/gid 0,
no user names, mode 0644, ustar format), so equal samples always give equal bytes.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Sequence
from pathlib import Path

Sample = tuple[str, dict[str, bytes]]  # key, {extension: file bytes}


class ShardError(ValueError):
    """A shard that cannot be read back: truncated, corrupt, or not what the summary says."""


def shard_bytes(samples: Sequence[Sample]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, files in sorted(samples):
            if "." in key or "/" in key:
                raise ValueError(f"sample key {key!r} must not contain '.' or '/' (WebDataset splits on them)")
            for ext in sorted(files):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(files[ext]), 0, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(files[ext]))
    return buffer.getvalue()


def write_shard(path: Path, samples: Sequence[Sample]) -> str:
    """Write the shard (atomically: a reader never sees half a file); returns its sha256."""
    data = shard_bytes(samples)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    return hashlib.sha256(data).hexdigest()


def read_shard(path: Path, *, sha256: str | None = None, extensions: Sequence[str] = ()) -> list[Sample]:
    """The samples of one shard in key order; ``ShardError`` naming the file if it is damaged.

    ``sha256``: the digest the shard must have; ``extensions``: files every sample must have.
    """
    if not path.is_file():
        raise FileNotFoundError(f"{path}: shard not found")
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ShardError(f"{path}: corrupt shard (sha256 differs from the corpus summary)")
    # tarfile ends quietly at a missing header, so check the end-of-archive blocks are there
    if len(data) < 1024 or len(data) % 512 or data[-1024:].strip(b"\0"):
        raise ShardError(f"{path}: corrupt shard (truncated: no end-of-archive marker)")
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, _, ext = member.name.rpartition("/")[2].partition(".")
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover (isfile members always have a payload)
                    raise ShardError(f"{path}: corrupt shard (no data for {member.name})")
                samples.setdefault(key, {})[ext] = handle.read()
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ShardError(f"{path}: corrupt shard ({error})") from error
    for key, files in samples.items():
        missing = sorted(set(extensions) - set(files))
        if missing:
            raise ShardError(f"{path}: corrupt shard (sample {key} lacks {', '.join(missing)})")
    return sorted(samples.items())
