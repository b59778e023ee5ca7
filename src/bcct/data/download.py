"""Getting a data set onto disk: ``bcct data cub ROOT`` and ``bcct data ilsvrc ROOT``.

CUB-200-2011 (Wah et al. 2011; the paper's sec. 5.1) is public. Installing it is one small
function per step::

    fetch        resumable HTTP download (Range on ``<archive>.part``) next to ROOT
    check_md5    the archive against its expected MD5 (or ``--md5``)
    safe_extract tar members only inside the destination (tarfile's "data" filter)
    check_cub    the extracted folder through the CUB reader, every listed image present

``install_cub`` runs them and then moves the checked folder into place with one rename:
everything is extracted into a temporary folder next to ROOT, which is removed on any
failure, so ROOT is either absent, as it was, or complete.

The official archive ``CUB_200_2011.tgz`` unpacks to ``CUB_200_2011/{images.txt, images/,
...}`` plus a top-level ``attributes.txt`` (kept as ``ROOT/attributes.txt``); the masks
archive ``segmentations.tgz`` unpacks to ``segmentations/<class>/<name>.png``, which becomes
``ROOT/segmentations`` where :func:`bcct.data.cub.read_cub` looks for masks.

ILSVRC needs an image-net.org login, so ``bcct data ilsvrc`` only says what to fetch
(:data:`ILSVRC_HELP`) and checks the folder once it is there (:func:`check_ilsvrc`).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from bcct.data.cub import read_cub
from bcct.data.ilsvrc import read_ilsvrc
from bcct.data.wsol_metadata import read_wsol_metadata
from bcct.data.records import WSOLSet
from bcct.errors import BadInput

CHUNK = 1 << 20  # bytes per read when downloading and hashing
TIMEOUT_S = 60.0  # per socket operation, not for the whole download


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: its file name, official address and expected MD5."""

    name: str
    url: str
    md5: str
    md5_source: str  # said in a mismatch error, so the user can judge the expected value
    md5_flag: str  # the option that replaces md5
    from_flag: str  # the option that takes the archive from disk


CUB_ARCHIVE = Archive(
    "CUB_200_2011.tgz", "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
    "97eceeb196236b17998738112f37df78", "the MD5 published for CUB_200_2011.tgz", "--md5", "--from",
)
# Caltech's record publishes no MD5 for the masks that we could find; this value is the one a
# third-party CUB loader lists (a copy of TDeVries/cub2011_dataset's cub2011.py). A wrong
# value can only refuse a good file (the error prints the actual MD5 to pass back), never
# accept a corrupt one, so checking against it beats not checking.
SEGMENTATIONS_ARCHIVE = Archive(
    "segmentations.tgz", "https://data.caltech.edu/records/w9d68-gec53/files/segmentations.tgz",
    "56989585210501b1f12e9e5d8ad97edd",
    "not published by Caltech; the value a third-party CUB loader lists", "--segmentations-md5",
    "--segmentations-from",
)


def say(message: str) -> None:
    print(message, flush=True)


def _bar(progress: bool, **kwargs) -> tqdm:
    return tqdm(unit="B", unit_scale=True, unit_divisor=1024, leave=False, file=sys.stderr,
                disable=None if progress else True, **kwargs)


# ---------------------------------------------------------------- fetch


def _range_total(content_range: str | None) -> int | None:
    """TOTAL of a ``Content-Range: bytes START-END/TOTAL`` (or ``bytes */TOTAL``) header."""
    match = re.fullmatch(r"bytes (?:\d+-\d+|\*)/(\d+)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def _range_start(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(?:\d+|\*)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def fetch(url: str, dest: str | Path, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming a previous ``dest.part`` with an HTTP Range request.

    ``dest`` appears only once all bytes are there (the ``.part`` is renamed); an existing
    ``dest`` is returned as it is (the MD5 check judges it). An interrupted download raises
    BadInput saying to rerun, which resumes from the ``.part``.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    offline = "on a machine without internet, download it elsewhere and pass --from FILE"
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing after byte `have`: complete, or a stale .part
            if _range_total(exc.headers.get("Content-Range")) == have:
                part.replace(dest)
                return dest
            part.unlink()
            return fetch(url, dest, progress)
        raise BadInput(f"{url}: HTTP {exc.code} {exc.reason}; check the address, or {offline}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise BadInput(f"{url}: cannot download ({reason}); {offline}") from None

    with response:
        resumed = bool(have) and response.status == 206 and _range_start(response.headers.get("Content-Range")) == have
        if not resumed:
            have = 0  # no .part, or the server sent the whole file: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        if have:
            say(f"resuming {dest.name} at {have} of {total or '?'} bytes")
        with open(part, "ab" if resumed else "wb") as fh, _bar(progress, desc=dest.name, total=total,
                                                               initial=have) as bar:
            try:
                while chunk := response.read(CHUNK):
                    fh.write(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                fh.flush()
                raise BadInput(f"{url}: download stopped at {fh.tell()} bytes ({exc}); run the same command "
                               f"again to resume from {part}") from None
    got = part.stat().st_size
    if total is not None and got != total:
        raise BadInput(f"{url}: download stopped at {got} of {total} bytes; run the same command again to resume "
                       f"from {part}")
    part.replace(dest)
    return dest


# ---------------------------------------------------------------- md5


def md5_of(path: str | Path, progress: bool = True) -> str:
    path = Path(path)
    digest = hashlib.md5()
    with open(path, "rb") as fh, _bar(progress, desc=f"md5 {path.name}", total=path.stat().st_size) as bar:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def parse_md5(text: str, flag: str) -> str:
    """A user's ``--md5`` value, lower-cased; BadInput unless it is 32 hex digits."""
    md5 = text.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise BadInput(f"{flag} {text!r}: an MD5 is 32 hexadecimal digits (as md5sum prints)")
    return md5


def check_md5(path: Path, expected: str, source: str, fix: str, progress: bool = True) -> None:
    """Raise BadInput naming the file, both MD5s and the fix unless ``path`` hashes to ``expected``."""
    actual = md5_of(path, progress)
    if actual != expected:
        raise BadInput(f"{path}: MD5 is {actual}, expected {expected} ({source}); {fix}")


# ---------------------------------------------------------------- safe extract


class _Counted:
    """A file object whose reads advance a progress bar (the archive's compressed bytes)."""

    def __init__(self, fh, bar: tqdm):
        self.fh, self.bar = fh, bar

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.bar.update(len(data))
        return data


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse a member that would land outside the destination (absolute path, ``..``, or a
    link pointing so), with the member's name; tarfile's "data" filter then enforces it."""
    targets = [("name", member.name)] + ([("link target", member.linkname)] if member.issym() or member.islnk() else [])
    for what, name in targets:
        pure = PurePosixPath(name.replace("\\", "/"))
        if pure.is_absolute() or ".." in pure.parts or re.match(r"^[A-Za-z]:", name):
            raise BadInput(f"{archive}: member {member.name!r} has {what} {name!r} outside the folder it extracts "
                           "to; refusing to extract this archive (it is not the official one)")


def safe_extract(archive: str | Path, dest: str | Path, progress: bool = True) -> None:
    """Extract a tar (gz, bz2, xz or plain) into ``dest``, refusing members that escape it.

    Streams the archive once; BadInput for a corrupt or truncated file. ``dest`` may be
    left partly written: callers extract into a temporary folder.
    """
    archive, dest = Path(archive), Path(dest)
    if not hasattr(tarfile, "data_filter"):
        raise BadInput(f"Python {sys.version.split()[0]} lacks tarfile's safe extraction filter; use Python 3.11.4+")
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with open(archive, "rb") as raw, _bar(progress, desc=f"extract {archive.name}",
                                              total=archive.stat().st_size) as bar:
            with tarfile.open(fileobj=_Counted(raw, bar), mode="r|*") as tar:
                for member in tar:
                    _check_member(member, archive)
                    tar.extract(member, dest, filter="data")
    except tarfile.FilterError as exc:
        raise BadInput(f"{archive}: refusing to extract ({exc}); it is not the official archive") from None
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise BadInput(f"{archive}: not a readable tar archive ({exc or type(exc).__name__}); it is truncated "
                       "or corrupt: delete it and download it again") from None
    except OSError as exc:
        raise BadInput(f"{archive}: cannot extract into {dest} ({exc.strerror or exc}); check free space and "
                       "permissions") from None


# ---------------------------------------------------------------- layout check


def summary(wset: WSOLSet) -> str:
    """One line: classes, images per split, boxes (and masks where there are any)."""
    counts = {s: len(wset.split(s)) for s in ("train", "val", "test")}
    boxes = sum(len(r.boxes) for r in wset.records)
    masks = sum(r.mask_path is not None for r in wset.records)
    images = ", ".join(f"{s} {n}" for s, n in counts.items())
    return f"{wset.num_classes} classes; images: {images}; {boxes} boxes" + (f", {masks} masks" if masks else "")


def _check_images_exist(wset: WSOLSet, listing: Path) -> None:
    missing = [r.path for r in wset.records if not r.path.is_file()]
    if missing:
        raise BadInput(f"{missing[0]}: listed in {listing} but missing ({len(missing)} of {len(wset.records)} "
                       "images missing); the data set is incomplete: extract or copy it again")


def check_cub(root: str | Path, need_masks: bool = False) -> WSOLSet:
    """Read ``root`` with the CUB reader and check every listed image (and, with
    ``need_masks``, at least one mask) is on disk; BadInput otherwise."""
    root = Path(root)
    wset = read_cub(root)
    _check_images_exist(wset, root / "images.txt")
    if need_masks and not any(r.mask_path for r in wset.records):
        raise _no_masks(root / "segmentations")
    return wset


def _no_masks(folder: Path) -> BadInput:
    return BadInput(f"{folder}: no mask for any image of images.txt (expected <class>/<name>.png as the image's "
                    "path); is the masks archive segmentations.tgz?")


def _has_all_masks(wset: WSOLSet) -> bool:
    return all(r.mask_path is not None for r in wset.records)


# ---------------------------------------------------------------- install


def obtain(archive: Archive, folder: Path, from_file: str | None, md5: str | None, url: str | None,
           progress: bool = True) -> Path:
    """A verified copy of ``archive``: ``from_file`` as it is, or downloaded into ``folder``.
    ``md5`` (checked by :func:`parse_md5`) replaces the archive's expected MD5."""
    expected = md5 or archive.md5
    source = f"given by {archive.md5_flag}" if md5 else archive.md5_source
    if from_file:
        path = Path(from_file)
        if not path.is_file():
            raise BadInput(f"{path}: not found; {archive.from_flag} takes the downloaded {archive.name}")
        fix = (f"fetch {archive.name} again from {archive.url}, or, if this file is a trusted mirror's, "
               f"pass {archive.md5_flag} with its MD5")
    else:
        path = folder / archive.name
        say(f"downloading {url or archive.url} -> {path}")
        fetch(url or archive.url, path, progress)
        fix = (f"delete {path} and run the command again to download it again, or, if you trust this file, "
               f"pass {archive.md5_flag} with its MD5")
    say(f"checking the MD5 of {path}")
    check_md5(path, expected, source, fix, progress)
    return path


def _cub_folder(extracted: Path, archive: Path) -> Path:
    """The folder holding images.txt: ``extracted`` itself or its one subfolder that does
    (``CUB_200_2011/`` in the official archive); BadInput otherwise."""
    if (extracted / "images.txt").is_file():
        return extracted
    found = [d for d in sorted(extracted.iterdir()) if d.is_dir() and (d / "images.txt").is_file()]
    if len(found) != 1:
        raise BadInput(f"{archive}: holds no CUB-200-2011 folder (images.txt neither at its top level nor one "
                       "folder down); is it CUB_200_2011.tgz?")
    return found[0]


def _masks_folder(extracted: Path, archive: Path) -> Path:
    if (extracted / "segmentations").is_dir():
        return extracted / "segmentations"
    dirs = [d for d in extracted.iterdir() if d.is_dir()]
    if len(dirs) == 1 and any(dirs[0].rglob("*.png")):
        return dirs[0]
    raise BadInput(f"{archive}: holds no segmentations/ folder of <class>/<name>.png masks; is it segmentations.tgz?")


def _swap_in(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest`` by rename (same file system), replacing what is there."""
    if not dest.exists():
        new.rename(dest)
        return
    old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    dest.rename(old)
    try:
        new.rename(dest)
    except OSError:
        old.rename(dest)
        raise
    if old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink()


def _existing_state(root: Path, segmentations: bool, force: bool) -> tuple[str, WSOLSet | None]:
    """("absent" | "complete" | "needs masks" | "replace", the set read) for what ROOT holds now."""
    if not root.exists() or (root.is_dir() and not any(root.iterdir())):
        return "absent", None
    try:
        wset = check_cub(root)
    except BadInput as exc:
        if force:
            return "replace", None
        raise BadInput(f"{root}: exists but is not a complete CUB-200-2011 layout ({exc}); pass --force to replace "
                       "it, or choose another ROOT") from None
    if force:
        return "replace", wset
    return ("needs masks" if segmentations and not _has_all_masks(wset) else "complete"), wset


def install_cub(root: str | Path, segmentations: bool = False, from_file: str | None = None,
                segmentations_from: str | None = None, md5: str | None = None, segmentations_md5: str | None = None,
                url: str | None = None, segmentations_url: str | None = None, force: bool = False,
                progress: bool = True) -> WSOLSet:
    """Get CUB-200-2011 (and with ``segmentations`` its masks) into ``root``; return the set read.

    Idempotent: a ROOT that already holds the layout (with masks, if asked) is left alone;
    one without masks gets only the masks. ``force`` installs everything again.
    """
    root = Path(root)
    segmentations = segmentations or bool(segmentations_from)
    md5 = parse_md5(md5, CUB_ARCHIVE.md5_flag) if md5 else None
    segmentations_md5 = parse_md5(segmentations_md5, SEGMENTATIONS_ARCHIVE.md5_flag) if segmentations_md5 else None
    state, wset = _existing_state(root, segmentations, force)
    if state == "complete":
        say(f"{root}: already a CUB-200-2011 layout ({summary(wset)}); nothing to do (--force installs it again)")
        return wset
    parent = root.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    cub = None if state == "needs masks" else obtain(CUB_ARCHIVE, parent, from_file, md5, url, progress)
    masks = (obtain(SEGMENTATIONS_ARCHIVE, parent, segmentations_from, segmentations_md5, segmentations_url, progress)
             if segmentations else None)

    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=parent))
    try:
        if cub is None:  # masks only, into an existing install
            say(f"extracting {masks} into {root / 'segmentations'}")
            safe_extract(masks, tmp / "masks", progress)
            new = _masks_folder(tmp / "masks", masks)
            if not any((new / r.path.relative_to(root / "images")).with_suffix(".png").is_file() for r in wset.records):
                raise _no_masks(new)
            _swap_in(new, root / "segmentations")
            wset = check_cub(root, need_masks=True)
        else:
            say(f"extracting {cub}" + (f" and {masks}" if masks else ""))
            safe_extract(cub, tmp / "cub", progress)
            folder = _cub_folder(tmp / "cub", cub)
            if folder != tmp / "cub":  # top-level extras of the official archive (attributes.txt)
                for extra in (tmp / "cub").iterdir():
                    if extra != folder and not (folder / extra.name).exists():
                        extra.rename(folder / extra.name)
            if masks:
                safe_extract(masks, tmp / "masks", progress)
                _swap_in(_masks_folder(tmp / "masks", masks), folder / "segmentations")
            check_cub(folder, need_masks=bool(masks))
            _swap_in(folder, root)
            wset = read_cub(root)  # checked above, before the swap: only the paths change
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"{root}: CUB-200-2011 ready ({summary(wset)}); train with --data {root}")
    downloaded = [str(p) for p, given in ((cub, from_file), (masks, segmentations_from)) if p and not given]
    if downloaded:
        say(f"kept {', '.join(downloaded)} (delete to free the space; a rerun with --force reuses it)")
    return wset


# ---------------------------------------------------------------- ILSVRC

ILSVRC_HELP = """\
ILSVRC 2012 (CLS-LOC) cannot be downloaded without an account: log in at https://image-net.org
(Download > ILSVRC 2012) and fetch
  ILSVRC2012_img_train.tar     138 GB, MD5 1d675b47d978889d74fa0da5fadfb00e (one <wnid>.tar per class)
  ILSVRC2012_img_val.tar       6.3 GB, MD5 29b22e2961454d5413ddabcf34fc5622 (50,000 images)
  ILSVRC2012_bbox_val_v3.tgz   the val boxes, one Pascal-VOC XML per image
and lay them out as (data.layout=ilsvrc, the paper's recipes):
  ROOT/train/<wnid>/*.JPEG     untar the train tar, then each <wnid>.tar into train/<wnid>/
  ROOT/val/*.JPEG              untar the val tar (val/<wnid>/*.JPEG is accepted too)
  ROOT/val_boxes/*.xml         the XML files of the bbox archive
or use the splits of wsolevaluation (Choe et al., CVPR 2020; data.layout=wsol): its
metadata/ILSVRC folder (https://github.com/clovaai/wsolevaluation) as ROOT/metadata (or
--metadata DIR), with the images at the paths it lists under ROOT.
Then `bcct data ilsvrc ROOT` checks the folder."""


def check_ilsvrc(root: str | Path, metadata: str | Path = "") -> tuple[str, WSOLSet]:
    """(layout name, the set read) of an ImageNet folder: wsolevaluation metadata when
    ``metadata`` is given or ROOT/metadata exists, else the ILSVRC folder layout."""
    root = Path(root)
    if not root.is_dir():
        raise BadInput(f"{root}: not found; fetch and lay out the files listed above, then run "
                       f"`bcct data ilsvrc {root}` again")
    if str(metadata) or (root / "metadata").is_dir():
        wset = read_wsol_metadata(root, metadata)
        _check_images_exist(wset, Path(metadata) if str(metadata) else root / "metadata")
        return "wsol", wset
    return "ilsvrc", read_ilsvrc(root)
