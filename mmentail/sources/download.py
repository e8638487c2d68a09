"""Download of the real Multimodal Entailment data set (CSV + image archive), verified.

The URLs are the ones the keras.io example uses. What is downloaded is kept:

- A file is fetched into `<name>.part` and renamed when complete, so the cache
  never holds half a file under its real name. An interrupted transfer is
  retried, resuming with an HTTP `Range` request, or from the start when the
  server ignores ranges; a `.part` left by a killed run is resumed the same way.
  HTTP 408, 429 and 5xx answers are retried too, after the server's
  `Retry-After` (in seconds, capped) when it sends one; other 4xx fail at once.
- Its SHA-256 is checked against the pinned value when there is one, else
  computed and recorded in `<name>.sha256`, and checked on every later use. The
  data set's hashes are not pinned yet (`None` below): after a first download
  from a trusted network, copy the recorded values into
  `DATASET_CSV_SHA256` / `DATASET_IMAGES_SHA256` (or pass them as arguments).
- An archive is refused whole, before anything is written, if any member has an
  absolute path, climbs out with `..`, links outside the folder or is a device
  (tarfile's "data" filter); it is extracted into a new folder that appears
  complete or not at all.

`tf_keras.utils.get_file` (2.21) does none of the first and last: it writes to
the final name, never resumes, and checks tar members against the current
directory instead of the extraction folder, skipping (not refusing) bad ones.

Example:
    csv_path, image_dir = download_dataset("~/.cache/mmentail")
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from mmentail.errors import MmentailError
from mmentail.io_utils import atomic_directory, atomic_write_text
from mmentail.progress import Progress

DATASET_CSV_URL = (
    "https://github.com/sayakpaul/Multimodal-Entailment-Baseline/raw/main/csvs/tweets.csv")
DATASET_IMAGES_URL = (
    "https://github.com/sayakpaul/Multimodal-Entailment-Baseline/releases/download/"
    "v1.0.0/tweet_images.tar.gz")
DATASET_CSV_SHA256: str | None = None
DATASET_IMAGES_SHA256: str | None = None
_CHUNK = 1 << 20
_RETRIED_CLIENT_ERRORS = frozenset({408, 429})  # timeout, rate limit: transient like a 5xx
_MAX_RETRY_AFTER = 60.0  # seconds; a server asking for longer is not waited for

log = logging.getLogger(__name__)


class DownloadError(MmentailError, OSError):
    """A download that failed after its retries, or does not match its checksum."""


class UnsafeArchiveError(MmentailError, ValueError):
    """An archive with members that would land outside the extraction folder."""


def download_dataset(cache_dir: str | Path, csv_url: str = DATASET_CSV_URL,
                     images_url: str = DATASET_IMAGES_URL, *, csv_sha256: str | None = None,
                     images_sha256: str | None = None) -> tuple[Path, Path]:
    """Fetches the pairs CSV and the image archive, verified, and extracts the images.

    Args:
        cache_dir: downloads go to `<cache_dir>/datasets`.
        csv_url, images_url: where the CSV and the image archive are.
        csv_sha256, images_sha256: expected SHA-256 hex digests; None uses the
            pinned `DATASET_*_SHA256` (when those are None too, the first
            download's hashes are recorded and later uses are checked against them).

    Returns:
        (csv_path, image_dir).
    """
    folder = Path(cache_dir).expanduser() / "datasets"
    csv_path = fetch(csv_url, folder / "multimodal_entailment_tweets.csv",
                     csv_sha256 or DATASET_CSV_SHA256)
    archive = fetch(images_url, folder / "tweet_images.tar.gz",
                    images_sha256 or DATASET_IMAGES_SHA256)
    extracted = extract_archive(archive, folder / "tweet_images_archive")
    inner = extracted / "tweet_images"
    return csv_path, inner if inner.is_dir() else extracted


def fetch(url: str, path: str | Path, sha256: str | None = None, *, attempts: int = 4,
          timeout: float = 60.0, retry_wait: float = 2.0) -> Path:
    """Downloads `url` to `path` unless a verified copy is there already.

    Args:
        url: what to download.
        path: where to keep it.
        sha256: expected hex digest; None checks a cached copy against the
            digest recorded when it was downloaded.
        attempts: transfers tried (each resuming the last) before giving up.
        timeout: seconds without data before a transfer counts as failed.
        retry_wait: seconds before the first retry, doubled for each next one;
            a `Retry-After` in seconds (capped at a minute) replaces it.

    Raises:
        DownloadError: the transfer kept failing (the `.part` file is kept for
            the next call to resume), or the file does not match `sha256`.
    """
    path = Path(path)
    recorded = path.with_name(path.name + ".sha256")
    if path.is_file():
        expected = sha256 or (recorded.read_text().split()[0] if recorded.is_file() else None)
        if expected is None or _same_digest(file_sha256(path), expected):
            return path
        log.warning("%s does not match its SHA-256 %s: downloading it again", path, expected)
        path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    for attempt in range(1, attempts + 1):
        try:
            _transfer(url, part, timeout)
            break
        except (OSError, http.client.HTTPException) as e:
            if isinstance(e, urllib.error.HTTPError) and e.code == 416:
                part.unlink(missing_ok=True)  # our partial file does not fit the server's
            elif (isinstance(e, urllib.error.HTTPError) and e.code < 500
                  and e.code not in _RETRIED_CLIENT_ERRORS):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
            kept = part.stat().st_size if part.exists() else 0
            if attempt == attempts:
                raise DownloadError(f"{url}: {e} (attempt {attempt} of {attempts}); {kept} "
                                    f"bytes kept in {part}, the next run resumes") from e
            log.warning("%s: %s; retrying from byte %d", url, e, kept)
            time.sleep(_retry_delay(e, retry_wait * 2 ** (attempt - 1)))
    actual = file_sha256(part)
    if sha256 is not None and not _same_digest(actual, sha256):
        part.unlink()
        raise DownloadError(f"{url}: SHA-256 {actual} does not match the expected {sha256}; "
                            "the download was discarded")
    os.replace(part, path)
    atomic_write_text(recorded, f"{actual}  {path.name}\n")
    log.info("downloaded %s (SHA-256 %s)", path, actual)
    return path


def _same_digest(a: str, b: str) -> bool:
    """Hex digests compared case-insensitively: pinned ones are often copied in upper case."""
    return a.strip().lower() == b.strip().lower()


def _retry_delay(error: Exception, backoff: float) -> float:
    """The server's `Retry-After` in seconds (capped) when it sent one, else `backoff`.

    The HTTP-date form is not parsed: it falls back to `backoff`.
    """
    value = ""
    if isinstance(error, urllib.error.HTTPError) and error.headers is not None:
        value = (error.headers.get("Retry-After") or "").strip()
    return min(float(value), _MAX_RETRY_AFTER) if value.isascii() and value.isdigit() else backoff


def _transfer(url: str, part: Path, timeout: float) -> None:
    """Appends the rest of `url` to `part` (all of it if the server ignores `Range`)."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                timeout=timeout) as response:
        resumed = response.status == 206
        content_range = response.headers.get("Content-Range", "")
        if resumed and not (have and content_range.startswith(f"bytes {have}-")):
            part.unlink(missing_ok=True)
            raise DownloadError(f"{url}: unexpected partial content {content_range!r}")
        if have and not resumed:
            log.info("%s: the server does not resume; downloading from the start", url)
            have = 0
        length = response.headers.get("Content-Length")
        progress = Progress(f"downloading {part.name[:-len('.part')]}",
                            int(length) if length else 0, "byte")
        with open(part, "ab" if resumed else "wb") as f:
            while chunk := response.read(_CHUNK):
                f.write(chunk)
                progress.add(len(chunk))
    if length is not None and part.stat().st_size < have + int(length):
        raise http.client.IncompleteRead(b"", have + int(length) - part.stat().st_size)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's content, read in chunks (`hashlib.file_digest` is 3.11+)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def extract_archive(archive: str | Path, target: str | Path) -> Path:
    """Extracts a tar (any compression) or zip archive into `target`, atomically.

    Skipped when `target` holds an extraction of the same archive (by SHA-256).

    Raises:
        UnsafeArchiveError: listing every member with an absolute path, `..`,
            a link leaving `target` or a device file; nothing is extracted.
    """
    archive, target = Path(archive), Path(target)
    digest = file_sha256(archive)
    marker = target / ".archive.sha256"
    if marker.is_file() and marker.read_text().strip() == digest:
        return target
    with atomic_directory(target) as tmp:
        if tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tar:
                members = tar.getmembers()
                _refuse(archive, [f"{m.name!r}: {e}" for m in members
                                  for e in _tar_member_problems(m, tmp)])
                tar.extractall(tmp, members=members, filter="data")
        elif zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zip_file:
                _refuse(archive, [f"{name!r}: absolute path or '..'"
                                  for name in zip_file.namelist() if _escapes(name)])
                zip_file.extractall(tmp)
        else:
            raise UnsafeArchiveError(f"{archive}: not a tar or zip archive")
        atomic_write_text(Path(tmp) / marker.name, digest + "\n")
    return target


def _tar_member_problems(member: tarfile.TarInfo, destination: Path) -> list[str]:
    """Refused even where the "data" filter would only strip a leading '/'."""
    if _escapes(member.name):
        return ["absolute path or '..'"]
    try:
        tarfile.data_filter(member, str(destination))
    except tarfile.FilterError as e:
        return [str(e)]
    return []


def _escapes(name: str) -> bool:
    """True for a zip member name that is absolute, has a drive or climbs with '..'."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return bool(parts) and (parts[0] == "/" or ":" in parts[0] or ".." in parts)


def _refuse(archive: Path, problems: list[str]) -> None:
    if problems:
        raise UnsafeArchiveError(f"{archive}: refusing to extract {len(problems)} unsafe "
                                 "member(s):\n" + "\n".join(f"  - {p}" for p in problems))
