"""``bcct data cub`` and ``bcct data ilsvrc`` (bcct.data.download), offline, on archives the
tests build: a 2-class, 6-image CUB-200-2011 tarball shaped like the official one
(``CUB_200_2011/...`` plus a top-level ``attributes.txt``) and its ``segmentations/`` masks.

Contract: the installed ROOT reads with the CUB reader; any failure (MD5 mismatch, corrupt
archive, a member escaping the folder, an interrupted download) is one ``error:`` line,
exit 2, with ROOT as it was and no temporary folder left; a download resumes with an HTTP
Range request from a local server.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bcct.cli import main
from bcct.config import DataConfig
from bcct.data.cub import read_cub
from bcct.data.download import SEGMENTATIONS_ARCHIVE
from bcct.data.images import load_rgb
from bcct.data.readers import read_dataset

CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
PER_CLASS = 3


def _png(size=(12, 10), seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def _image_paths() -> list[str]:
    return [f"{c}/{c.split('.')[1]}_{j + 1:04d}.jpg" for c in CLASSES for j in range(PER_CLASS)]


def _tgz(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def cub_files(top: str = "CUB_200_2011/") -> dict[str, bytes]:
    """The official archive's shape: annotation files and images under CUB_200_2011/."""
    rel = _image_paths()
    text = {
        "images.txt": "".join(f"{i} {p}\n" for i, p in enumerate(rel, 1)),
        "image_class_labels.txt": "".join(f"{i} {k // PER_CLASS + 1}\n" for k, i in enumerate(range(1, 7))),
        "train_test_split.txt": "".join(f"{i} {i % 2}\n" for i in range(1, 7)),
        "bounding_boxes.txt": "".join(f"{i} 1.0 2.0 8.0 6.0\n" for i in range(1, 7)),
        "classes.txt": "".join(f"{k + 1} {c}\n" for k, c in enumerate(CLASSES)),
    }
    files = {top + name: body.encode() for name, body in text.items()}
    files.update({top + "images/" + p: _png(seed=k) for k, p in enumerate(rel)})
    files["attributes.txt"] = b"1 has_bill_shape::curved\n"
    return files


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    base = tmp_path_factory.mktemp("archives")
    cub = _tgz(base / "CUB_200_2011.tgz", cub_files())
    masks = _tgz(base / "segmentations.tgz",
                 {"segmentations/" + Path(p).with_suffix(".png").as_posix(): _png(seed=k, mode="L")
                  for k, p in enumerate(_image_paths())})
    return cub, masks


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------- --from: install, idempotence


def test_from_archive_gives_a_layout_the_reader_and_data_accept(archives, tmp_path, capsys):
    cub, _ = archives
    root = tmp_path / "data" / "CUB_200_2011"
    assert main(["data", "cub", str(root), "--from", str(cub), "--md5", _md5(cub), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "CUB-200-2011 ready" in out and f"--data {root}" in out
    wset = read_cub(root)
    assert wset.class_names == CLASSES and len(wset.records) == 6
    assert sum(r.is_train for r in wset.records) == 3  # ids 1, 3, 5
    assert (root / "attributes.txt").is_file()  # the archive's top-level extra, kept beside the layout
    # --data ROOT works as it is: the config's reader finds the images and they decode.
    records = read_dataset(DataConfig(root=str(root))).records
    assert load_rgb(records[0].path).size == (12, 10)
    assert _leftovers(root.parent) == [] and sorted(p.name for p in root.parent.iterdir()) == ["CUB_200_2011"]


def test_rerun_is_idempotent_and_force_installs_again(archives, tmp_path, capsys):
    cub, _ = archives
    root = tmp_path / "cub"
    args = ["data", "cub", str(root), "--from", str(cub), "--md5", _md5(cub), "--quiet"]
    assert main(args) == 0
    (root / "marker").write_text("mine")
    capsys.readouterr()
    assert main(args) == 0
    assert "already a CUB-200-2011 layout" in capsys.readouterr().out
    assert (root / "marker").is_file()  # left alone
    assert main(args + ["--force"]) == 0
    assert not (root / "marker").exists() and len(read_cub(root).records) == 6
    assert _leftovers(tmp_path) == []


def test_segmentations_land_where_the_reader_looks(archives, tmp_path, capsys):
    cub, masks = archives
    root = tmp_path / "cub"
    assert main(["data", "cub", str(root), "--from", str(cub), "--md5", _md5(cub),
                 "--segmentations-from", str(masks), "--segmentations-md5", _md5(masks), "--quiet"]) == 0
    wset = read_cub(root)
    assert all(r.mask_path is not None and r.mask_path.is_file() for r in wset.records)
    assert "6 masks" in capsys.readouterr().out


def test_masks_are_added_to_an_existing_install(archives, tmp_path, capsys):
    cub, masks = archives
    root = tmp_path / "cub"
    assert main(["data", "cub", str(root), "--from", str(cub), "--md5", _md5(cub), "--quiet"]) == 0
    (root / "marker").write_text("mine")
    assert main(["data", "cub", str(root), "--segmentations-from", str(masks), "--segmentations-md5", _md5(masks),
                 "--quiet"]) == 0
    assert (root / "marker").is_file()  # the images were not installed again
    assert all(r.mask_path is not None for r in read_cub(root).records)
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------- failures leave nothing behind


def test_md5_mismatch_is_one_error_with_both_md5s_and_nothing_written(archives, tmp_path, capsys):
    cub, _ = archives
    root = tmp_path / "cub"
    assert main(["data", "cub", str(root), "--from", str(cub), "--quiet"]) == 2  # expects the official MD5
    line = _one_error_line(capsys)
    assert str(cub) in line and _md5(cub) in line and "97eceeb196236b17998738112f37df78" in line
    assert "--md5" in line  # the fix for a trusted mirror's file
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_segmentations_md5_mismatch_says_where_the_expected_value_comes_from(archives, tmp_path, capsys):
    cub, masks = archives
    root = tmp_path / "cub"
    assert main(["data", "cub", str(root), "--from", str(cub), "--md5", _md5(cub),
                 "--segmentations-from", str(masks), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert SEGMENTATIONS_ARCHIVE.md5 in line and _md5(masks) in line and "not published" in line
    assert "--segmentations-md5" in line
    assert not root.exists() and list(tmp_path.iterdir()) == []


def test_a_malformed_md5_argument_is_refused(archives, tmp_path, capsys):
    cub, _ = archives
    assert main(["data", "cub", str(tmp_path / "cub"), "--from", str(cub), "--md5", "abc"]) == 2
    assert "32 hexadecimal digits" in _one_error_line(capsys)


def test_corrupt_archive_is_a_clear_error_and_nothing_half_written(archives, tmp_path, capsys):
    cub, _ = archives
    broken = tmp_path / "in" / "CUB_200_2011.tgz"
    broken.parent.mkdir()
    broken.write_bytes(cub.read_bytes()[: cub.stat().st_size // 2])  # truncated mid-stream
    root = tmp_path / "out" / "cub"
    assert main(["data", "cub", str(root), "--from", str(broken), "--md5", _md5(broken), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert str(broken) in line and "truncated or corrupt" in line
    assert not root.exists() and list(root.parent.iterdir()) == []


@pytest.mark.parametrize("evil", ["../escaped.txt", "/tmp/bcct_absolute.txt", "CUB_200_2011/../../escaped.txt"])
def test_a_member_outside_the_folder_is_refused(tmp_path, capsys, evil):
    files = cub_files()
    files[evil] = b"pwned"
    bad = _tgz(tmp_path / "evil.tgz", files)
    root = tmp_path / "out" / "cub"
    assert main(["data", "cub", str(root), "--from", str(bad), "--md5", _md5(bad), "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert evil in line and "refusing" in line
    assert not root.exists() and list(root.parent.iterdir()) == []
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "out" / "escaped.txt").exists()


def test_a_link_out_of_the_folder_is_refused(tmp_path, capsys):
    link = tarfile.TarInfo("CUB_200_2011/images/link")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
    bad = _tgz(tmp_path / "link.tgz", cub_files(), extra=[link])
    root = tmp_path / "out" / "cub"
    assert main(["data", "cub", str(root), "--from", str(bad), "--md5", _md5(bad), "--quiet"]) == 2
    assert "link target" in _one_error_line(capsys)
    assert not root.exists() and list(root.parent.iterdir()) == []


def test_an_archive_that_is_not_cub_is_refused(tmp_path, capsys):
    other = _tgz(tmp_path / "other.tgz", {"photos/a.png": _png()})
    root = tmp_path / "out" / "cub"
    assert main(["data", "cub", str(root), "--from", str(other), "--md5", _md5(other), "--quiet"]) == 2
    assert "images.txt" in _one_error_line(capsys)
    assert not root.exists() and list(root.parent.iterdir()) == []


def test_an_archive_missing_images_is_refused(tmp_path, capsys):
    files = cub_files()
    del files["CUB_200_2011/images/" + _image_paths()[-1]]
    partial = _tgz(tmp_path / "partial.tgz", files)
    root = tmp_path / "out" / "cub"
    assert main(["data", "cub", str(root), "--from", str(partial), "--md5", _md5(partial), "--quiet"]) == 2
    assert "1 of 6 images missing" in _one_error_line(capsys)
    assert not root.exists() and list(root.parent.iterdir()) == []


def test_an_existing_folder_that_is_not_cub_is_kept_without_force(archives, tmp_path, capsys):
    cub, _ = archives
    root = tmp_path / "cub"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    assert main(["data", "cub", str(root), "--from", str(cub), "--md5", _md5(cub), "--quiet"]) == 2
    assert "--force" in _one_error_line(capsys)
    assert (root / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------- resumable download


class _Handler(BaseHTTPRequestHandler):
    """Serves ``server.payload`` at any path, honouring ``Range: bytes=N-`` (unless
    ``server.honour_range`` is false); cuts the body after ``server.cut_after`` bytes once
    (a dropped connection)."""

    def do_GET(self):
        data, rng = self.server.payload, self.headers.get("Range")
        self.server.ranges.append(rng)
        start = int(rng.removeprefix("bytes=").rstrip("-")) if rng and self.server.honour_range else 0
        if start >= len(data) > 0:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.server.cut_after is not None:
            body, self.server.cut_after = body[: self.server.cut_after], None
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(archives, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.payload, httpd.ranges, httpd.cut_after, httpd.honour_range = archives[0].read_bytes(), [], None, True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_an_interrupted_download_resumes_with_a_range_request(archives, server, tmp_path, capsys):
    cub, _ = archives
    root = tmp_path / "cub"
    url = f"http://127.0.0.1:{server.server_address[1]}/CUB_200_2011.tgz"
    args = ["data", "cub", str(root), "--url", url, "--md5", _md5(cub), "--quiet"]
    server.cut_after = 1000
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "stopped at 1000 of" in line and "again to resume" in line
    assert (tmp_path / "CUB_200_2011.tgz.part").stat().st_size == 1000 and not root.exists()

    assert main(args) == 0
    assert server.ranges == [None, "bytes=1000-"]
    assert _md5(tmp_path / "CUB_200_2011.tgz") == _md5(cub)  # kept next to ROOT, whole
    assert not (tmp_path / "CUB_200_2011.tgz.part").exists()
    assert len(read_cub(root).records) == 6 and _leftovers(tmp_path) == []


def test_a_download_with_the_wrong_md5_is_kept_for_a_rerun_with_the_right_one(archives, server, tmp_path, capsys):
    cub, _ = archives
    root, url = tmp_path / "cub", f"http://127.0.0.1:{server.server_address[1]}/x.tgz"
    assert main(["data", "cub", str(root), "--url", url, "--md5", "0" * 32, "--quiet"]) == 2
    line = _one_error_line(capsys)
    assert f"delete {tmp_path / 'CUB_200_2011.tgz'}" in line and _md5(cub) in line and "0" * 32 in line
    assert not root.exists() and _leftovers(tmp_path) == []
    assert main(["data", "cub", str(root), "--url", url, "--md5", _md5(cub), "--quiet"]) == 0
    assert server.ranges == [None]  # the second run hashed the kept file, it did not download again


def test_a_server_that_ignores_range_starts_over(archives, server, tmp_path, capsys):
    cub, _ = archives
    (tmp_path / "CUB_200_2011.tgz.part").write_bytes(b"garbage that is not the archive's start")
    server.honour_range = False
    url = f"http://127.0.0.1:{server.server_address[1]}/x.tgz"
    assert main(["data", "cub", str(tmp_path / "cub"), "--url", url, "--md5", _md5(cub), "--quiet"]) == 0
    assert _md5(tmp_path / "CUB_200_2011.tgz") == _md5(cub)


def test_a_part_file_already_whole_is_finished_by_a_416(archives, server, tmp_path, capsys):
    cub, _ = archives
    (tmp_path / "CUB_200_2011.tgz.part").write_bytes(cub.read_bytes())  # stopped after the last byte
    url = f"http://127.0.0.1:{server.server_address[1]}/x.tgz"
    assert main(["data", "cub", str(tmp_path / "cub"), "--url", url, "--md5", _md5(cub), "--quiet"]) == 0
    assert server.ranges == [f"bytes={cub.stat().st_size}-"]
    assert _md5(tmp_path / "CUB_200_2011.tgz") == _md5(cub)


def test_an_unreachable_server_points_to_from(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with ThreadingHTTPServer(("127.0.0.1", 0), _Handler) as probe:
        port = probe.server_address[1]  # closed again once the block ends: nothing listens there
    assert main(["data", "cub", str(tmp_path / "cub"), "--url", f"http://127.0.0.1:{port}/a.tgz", "--quiet"]) == 2
    assert "--from FILE" in _one_error_line(capsys)
    assert not (tmp_path / "cub").exists()


# ---------------------------------------------------------------- ILSVRC

WNIDS = ["n01440764", "n01443537"]


def _jpeg(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(_png(size=(16, 12), seed=seed))).save(path, format="JPEG")


def make_ilsvrc(root: Path) -> Path:
    """2 classes x 2 train images, 4 flat val images (val i is class i % 2) with one XML box each."""
    for k, wnid in enumerate(WNIDS):
        for j in range(2):
            _jpeg(root / "train" / wnid / f"{wnid}_{j + 1}.JPEG", seed=10 * k + j)
    (root / "val_boxes").mkdir(parents=True)
    for i in range(1, 5):
        name = f"ILSVRC2012_val_{i:08d}"
        _jpeg(root / "val" / f"{name}.JPEG", seed=100 + i)
        (root / "val_boxes" / f"{name}.xml").write_text(
            f"<annotation><size><width>16</width><height>12</height></size><object><name>{WNIDS[i % 2]}</name>"
            "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>8</ymax></bndbox></object></annotation>")
    return root


def test_ilsvrc_on_a_missing_folder_says_what_to_fetch(tmp_path, capsys):
    root = tmp_path / "ILSVRC2012"
    assert main(["data", "ilsvrc", str(root)]) == 2
    captured = capsys.readouterr()
    for needed in ("image-net.org", "ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar", "val_boxes",
                   "wsolevaluation", "ROOT/train/<wnid>/*.JPEG"):
        assert needed in captured.out
    assert captured.err.strip().splitlines() == [captured.err.strip()] and str(root) in captured.err


def test_ilsvrc_on_a_built_folder_prints_a_summary(tmp_path, capsys):
    root = make_ilsvrc(tmp_path / "ILSVRC2012")
    assert main(["data", "ilsvrc", str(root)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    # 4 val images, 2 per class: round(0.1 * 2) -> at least 1 per class held out as val, the rest test.
    assert "ilsvrc layout OK: 2 classes; images: train 4, val 2, test 2; 4 boxes" in out[0]
    assert "data.layout=ilsvrc" in out[0]


def test_ilsvrc_with_a_bad_folder_names_the_file_and_prints_the_layout(tmp_path, capsys):
    root = make_ilsvrc(tmp_path / "ILSVRC2012")
    (root / "val_boxes" / "ILSVRC2012_val_00000003.xml").unlink()
    assert main(["data", "ilsvrc", str(root)]) == 2
    captured = capsys.readouterr()
    assert "ROOT/val_boxes/*.xml" in captured.out and "ILSVRC2012_val_00000003" in captured.err


def test_ilsvrc_reads_wsolevaluation_metadata(tmp_path, capsys):
    root = make_ilsvrc(tmp_path / "ILSVRC2012")
    meta = root / "metadata"
    for split, names in (("train", [f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG"]),
                         ("test", ["val/ILSVRC2012_val_00000002.JPEG"])):
        (meta / split).mkdir(parents=True)
        (meta / split / "image_ids.txt").write_text("".join(f"{n}\n" for n in names))
        (meta / split / "class_labels.txt").write_text("".join(f"{n},0\n" for n in names))
        (meta / split / "localization.txt").write_text("".join(f"{n},1,1,9,8\n" for n in names))
    assert main(["data", "ilsvrc", str(root)]) == 0
    assert "wsol layout OK: 1 classes; images: train 1, val 0, test 1" in capsys.readouterr().out
    (meta / "test" / "image_ids.txt").write_text("val/ILSVRC2012_val_00000099.JPEG\n")
    (meta / "test" / "class_labels.txt").write_text("val/ILSVRC2012_val_00000099.JPEG,0\n")
    (meta / "test" / "localization.txt").write_text("val/ILSVRC2012_val_00000099.JPEG,1,1,9,8\n")
    assert main(["data", "ilsvrc", str(root)]) == 2
    assert "ILSVRC2012_val_00000099.JPEG: listed in" in capsys.readouterr().err
