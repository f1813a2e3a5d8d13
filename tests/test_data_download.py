"""`gasnas data download camvid` against a local file:// mirror built in tmp_path (no network)."""

from __future__ import annotations

import pytest
from data_fixtures import make_mirror

import gasnas.data.download as D
from gasnas.cli import main
from gasnas.errors import GasnasError

COUNTS = {"train": 3, "val": 2, "test": 1}


@pytest.fixture
def mirror(tmp_path):
    return make_mirror(tmp_path / "mirror", COUNTS)


def download(dest, source, expect="3,2,1", *extra):
    return main(["data", "download", "camvid", "--to", str(dest), "--source", source,
                 "--expect", expect, "--no-progress", *extra])


def test_download_from_file_mirror(tmp_path, mirror, capsys):
    dest = tmp_path / "camvid"
    assert download(dest, mirror.as_uri() + "/") == 0
    assert "train 3, val 2, test 1 pairs" in capsys.readouterr().out
    for split, n in COUNTS.items():
        assert len(list((dest / split).glob("*.png"))) == n
        assert len(list((dest / f"{split}annot").glob("*.png"))) == n
        assert (dest / f"{split}.txt").read_bytes() == (mirror / f"{split}.txt").read_bytes()
    assert (dest / "train" / "0001TP_000000.png").read_bytes() == (mirror / "train" / "0001TP_000000.png").read_bytes()
    assert (dest / D.MARKER).is_file()
    assert list(dest.rglob("*.part")) == []
    assert main(["data", "check", str(dest), "--format", "camvid", "--no-progress"]) == 0
    assert "test: 1 pairs" in capsys.readouterr().out
    assert download(dest, mirror.as_uri()) == 0  # no trailing slash; already complete
    assert "already complete" in capsys.readouterr().out


def test_download_resumes_after_interruption(tmp_path, mirror, monkeypatch, capsys):
    dest = tmp_path / "camvid"
    real = D._fetch
    calls: list[str] = []

    def interrupted(url, timeout=60.0):
        calls.append(url)
        if len(calls) == 3 + 4:  # 3 lists, 3 files done, the 4th dies half-written
            part = dest / "train" / "0001TP_000002.png.part"
            part.write_bytes(real(url)[:100])
            raise GasnasError(f"download failed: {url}: connection reset (simulated)")
        return real(url, timeout)

    monkeypatch.setattr(D, "_fetch", interrupted)
    assert download(dest, mirror.as_uri(), "3,2,1", "--jobs", "1") == 2
    assert "connection reset" in capsys.readouterr().err
    assert not (dest / D.MARKER).exists()
    done = [p for p in dest.rglob("*.png")]
    assert len(done) == 3
    for p in done:  # what exists under its final name is complete
        assert p.read_bytes() == (mirror / p.relative_to(dest)).read_bytes()

    calls.clear()
    monkeypatch.setattr(D, "_fetch", lambda url, timeout=60.0: (calls.append(url), real(url, timeout))[1])
    assert download(dest, mirror.as_uri(), "3,2,1", "--jobs", "2") == 0
    assert "fetched 9 of 12 files" in capsys.readouterr().out
    assert len(calls) == 3 + 9  # the lists, then only what was missing
    assert (dest / D.MARKER).is_file() and list(dest.rglob("*.part")) == []
    for p in dest.rglob("*.png"):
        assert p.read_bytes() == (mirror / p.relative_to(dest)).read_bytes()


def test_download_count_mismatch(tmp_path, mirror, capsys):
    assert download(tmp_path / "camvid", mirror.as_uri(), "4,2,1") == 2
    err = capsys.readouterr().err
    assert "train.txt: lists 3 pairs for 'train', expected 4" in err and err.count("\n") == 1
    assert not (tmp_path / "camvid" / D.MARKER).exists()


def test_download_errors_name_the_url(tmp_path, mirror, capsys):
    missing = (tmp_path / "nowhere").as_uri() + "/"
    assert download(tmp_path / "a", missing) == 2
    err = capsys.readouterr().err
    assert err.startswith("gasnas: error: download failed: " + missing + "train.txt") and err.count("\n") == 1
    (mirror / "val" / "0001TP_000001.png").write_bytes(b"<html>rate limited</html>")
    assert download(tmp_path / "b", mirror.as_uri()) == 2
    assert "val/0001TP_000001.png: not a PNG file" in capsys.readouterr().err
    assert download(tmp_path / "c", mirror.as_uri(), "3,2") == 2
    assert "--expect" in capsys.readouterr().err


def test_download_rejects_unsafe_list_paths(tmp_path, mirror, capsys):
    (mirror / "val.txt").write_text("/SegNet/CamVid/../../etc/passwd /SegNet/CamVid/valannot/x.png\n" * 2)
    assert download(tmp_path / "camvid", mirror.as_uri()) == 2
    assert "unsafe path" in capsys.readouterr().err
