"""Downloads against a local HTTP server that can cut transfers short and ignore ranges."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
import tf_keras

from helpers import encode_image
from mmentail.sources import download
from mmentail.sources.download import (
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    extract_archive,
    fetch,
)

DATA = os.urandom(300_000)


class _State:
    """What the server serves and how it misbehaves, and what it was asked."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.ranges = True
        self.cuts: list[int] = []  # successive responses stop after this many bytes
        self.requests: list[tuple[str, str | None]] = []
        self.bytes_sent = 0
        self.errors: list[tuple[int, dict[str, str]]] = []  # answered first, one per request


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        if state.errors:
            code, headers = state.errors.pop(0)
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        if self.headers.get("Range") and state.ranges:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if state.cuts:
            body = body[:state.cuts.pop(0)]
            self.close_connection = True
        # Counted before writing: the client may finish, and the test check
        # the count, before this thread runs again.
        state.bytes_sent += len(body)
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.state = _State()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_download_records_its_hash_and_cached_copies_are_checked(server, tmp_path):
    url, state = server
    state.files["/data.bin"] = DATA
    path = fetch(f"{url}/data.bin", tmp_path / "data.bin")
    assert path.read_bytes() == DATA
    assert (tmp_path / "data.bin.sha256").read_text().split()[0] == _sha(DATA)
    fetch(f"{url}/data.bin", path)
    assert len(state.requests) == 1  # cached
    path.write_bytes(DATA[:-1] + b"!")  # corrupted on disk
    assert fetch(f"{url}/data.bin", path).read_bytes() == DATA
    assert len(state.requests) == 2


def test_pinned_hash_is_verified(server, tmp_path):
    url, state = server
    state.files["/data.bin"] = DATA
    with pytest.raises(DownloadError, match=f"SHA-256 {_sha(DATA)} does not match the "
                                            f"expected {'0' * 64}"):
        fetch(f"{url}/data.bin", tmp_path / "data.bin", "0" * 64)
    assert list(tmp_path.iterdir()) == []  # nothing kept under any name
    assert fetch(f"{url}/data.bin", tmp_path / "data.bin", _sha(DATA)).read_bytes() == DATA


def test_upper_case_pinned_hash_is_accepted_and_the_cached_copy_reused(server, tmp_path):
    url, state = server
    state.files["/data.bin"] = DATA
    pinned = _sha(DATA).upper()
    assert fetch(f"{url}/data.bin", tmp_path / "data.bin", pinned).read_bytes() == DATA
    assert fetch(f"{url}/data.bin", tmp_path / "data.bin", pinned).read_bytes() == DATA
    assert len(state.requests) == 1  # the second call used the cached copy


def test_interrupted_transfer_resumes_with_range_requests(server, tmp_path):
    url, state = server
    state.files["/data.bin"] = DATA
    state.cuts = [100_000, 50_000]
    path = fetch(f"{url}/data.bin", tmp_path / "data.bin", _sha(DATA), retry_wait=0)
    assert path.read_bytes() == DATA
    assert [r for _, r in state.requests] == [None, "bytes=100000-", "bytes=150000-"]
    assert state.bytes_sent == len(DATA)  # nothing downloaded twice
    assert not (tmp_path / "data.bin.part").exists()


def test_server_without_ranges_restarts_from_the_start(server, tmp_path):
    url, state = server
    state.files["/data.bin"] = DATA
    state.ranges = False
    state.cuts = [100_000]
    path = fetch(f"{url}/data.bin", tmp_path / "data.bin", retry_wait=0)
    assert path.read_bytes() == DATA
    assert [r for _, r in state.requests] == [None, "bytes=100000-"]
    assert state.bytes_sent == 100_000 + len(DATA)


def test_a_failed_run_keeps_its_part_and_the_next_run_resumes(server, tmp_path):
    url, state = server
    state.files["/data.bin"] = DATA
    state.cuts = [70_000, 0]
    with pytest.raises(DownloadError, match=r"attempt 2 of 2\); 70000 bytes kept in .*"
                                            r"data.bin.part, the next run resumes"):
        fetch(f"{url}/data.bin", tmp_path / "data.bin", attempts=2, retry_wait=0)
    assert not (tmp_path / "data.bin").exists()
    assert fetch(f"{url}/data.bin", tmp_path / "data.bin").read_bytes() == DATA
    assert state.requests[-1] == ("/data.bin", "bytes=70000-")


def test_a_part_longer_than_the_file_restarts(server, tmp_path):
    url, state = server
    state.files["/data.bin"] = DATA
    (tmp_path / "data.bin.part").write_bytes(DATA + b"stale")
    assert fetch(f"{url}/data.bin", tmp_path / "data.bin", retry_wait=0).read_bytes() == DATA


@pytest.mark.parametrize("code, headers, wait", [
    (429, {"Retry-After": "3"}, 3.0),  # the server's delay, not the backoff
    (429, {"Retry-After": "86400"}, 60.0),  # capped at a minute
    (429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.5),  # a date: the backoff
    (408, {}, 0.5),
    (503, {"Retry-After": "2"}, 2.0),
])
def test_request_timeout_and_rate_limit_are_retried(server, tmp_path, monkeypatch, code,
                                                    headers, wait):
    url, state = server
    state.files["/data.bin"] = DATA
    state.errors = [(code, headers)]
    waits = []
    monkeypatch.setattr(download.time, "sleep", waits.append)
    path = fetch(f"{url}/data.bin", tmp_path / "data.bin", _sha(DATA), retry_wait=0.5)
    assert path.read_bytes() == DATA
    assert len(state.requests) == 2 and waits == [wait]


def test_missing_file_fails_at_once(server, tmp_path):
    url, state = server
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{url}/nope.bin", tmp_path / "nope.bin", retry_wait=0)
    assert len(state.requests) == 1


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return buffer.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_dataset_download_extracts_the_images_once(server, tmp_path):
    url, state = server
    image = encode_image("red", fmt="JPEG")
    state.files["/tweets.csv"] = b"id_1,text_1\n"
    state.files["/tweet_images.tar.gz"] = _tar([(_member("tweet_images", tarfile.DIRTYPE), b""),
                                                (_member("tweet_images/1.jpg"), image)])
    csv_path, image_dir = download_dataset(tmp_path, f"{url}/tweets.csv",
                                           f"{url}/tweet_images.tar.gz",
                                           csv_sha256=_sha(b"id_1,text_1\n"))
    assert csv_path.read_bytes() == b"id_1,text_1\n"
    assert (image_dir / "1.jpg").read_bytes() == image
    again = download_dataset(tmp_path, f"{url}/tweets.csv", f"{url}/tweet_images.tar.gz")
    assert again == (csv_path, image_dir) and len(state.requests) == 2


@pytest.mark.parametrize("member, problem", [
    (_member("../escaped.txt"), "absolute path or '..'"),
    (_member("images/../../escaped.txt"), "absolute path or '..'"),
    (_member("/tmp/mmentail-absolute-member.txt"), "absolute path or '..'"),
    (_member("images/passwd", tarfile.SYMTYPE, "/etc/passwd"), "absolute path"),
    (_member("images/up", tarfile.SYMTYPE, "../../escaped.txt"), "outside the destination"),
    (_member("images/hard", tarfile.LNKTYPE, "../escaped.txt"), "outside the destination"),
    (_member("images/null", tarfile.CHRTYPE), "special file"),
])
def test_unsafe_tar_members_refuse_the_whole_archive(tmp_path, member, problem):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar([(_member("images/1.jpg"), b"x"), (member, b"evil")]))
    target = tmp_path / "out" / "images_archive"
    with pytest.raises(UnsafeArchiveError,
                       match=f"(?s)1 unsafe member.*{member.name!r}.*{problem}"):
        extract_archive(archive, target)
    assert not target.exists() and list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/mmentail-absolute-member.txt").exists()


@pytest.mark.parametrize("name", ["../escaped.txt", "/abs.txt", "a/../../escaped.txt",
                                  "C:/windows.txt"])
def test_unsafe_zip_members_refuse_the_whole_archive(tmp_path, name):
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("images/1.jpg", b"x")
        zip_file.writestr(name, b"evil")
    with pytest.raises(UnsafeArchiveError, match="absolute path or '..'"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escaped.txt").exists()


def test_safe_archives_extract_and_a_new_archive_replaces_the_old_extraction(tmp_path):
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar([(_member("images/1.jpg"), b"one"),
                              (_member("images/link.jpg", tarfile.SYMTYPE, "1.jpg"), b"")]))
    target = extract_archive(archive, tmp_path / "out")
    assert (target / "images" / "link.jpg").read_bytes() == b"one"
    archive.write_bytes(_tar([(_member("images/2.jpg"), b"two")]))
    extract_archive(archive, target)
    assert sorted(p.name for p in (target / "images").iterdir()) == ["2.jpg"]
    with pytest.raises(UnsafeArchiveError, match="not a tar or zip archive"):
        (tmp_path / "b.tar.gz").write_bytes(b"not an archive")
        extract_archive(tmp_path / "b.tar.gz", tmp_path / "other")


def test_get_file_extract_lets_members_escape_when_run_from_the_root(server, tmp_path,
                                                                      monkeypatch):
    """Why extract_archive exists: tf_keras 2.21 checks members against the cwd."""
    url, state = server
    state.files["/a.tar.gz"] = _tar([(_member("1.jpg"), b"x"), (_member("../escaped.txt"),
                                                                 b"evil")])
    (tmp_path / "keras").mkdir()  # else get_file falls back to /tmp/.keras
    monkeypatch.chdir("/")
    tf_keras.utils.get_file("a.tar.gz", f"{url}/a.tar.gz", cache_dir=str(tmp_path / "keras"),
                            cache_subdir="datasets", extract=True)
    assert (tmp_path / "keras" / "datasets" / "1.jpg").is_file()
    assert (tmp_path / "keras" / "escaped.txt").read_bytes() == b"evil"  # outside datasets/
