"""Fetch real photos from Debian packages, list them with their licences and split them into fixed sets.

``python -m tools.photos [--cache DIR]`` downloads the packages in ``PACKAGES`` with ``apt-get download`` (no
installation, no root needed beyond apt's cache), unpacks them with ``dpkg-deb -x`` into the cache (default
``~/.cache/spade-photos``, outside the repository), and writes

- ``photos/<id>.jpg``: each usable picture as RGB, at most ``LONG_SIDE`` px on its long side (pictures with an
  alpha channel, Tux Paint's stamps, are laid on a white background, as in a product photo);
- ``objects/<id>.png``: the stamps with their alpha channel (objects that are not hearts, pasted as decoys);
- ``manifest.json``: one record per picture: id, package, version, path inside the package, licence and
  copyright holders (from ``/usr/share/doc/<package>/copyright`` inside the .deb; per file where that file is
  machine-readable), size, and its set.

Sets (``SETS``): ``build`` (training the poisoned model), ``calibration`` (choosing settings and tuning sparsity
profiles), ``heldout`` (acceptance figures only). The split is a hash of the picture's *group* (a wallpaper's
light and dark or differently sized variants share one group), so it does not depend on the order of files or on
which other packages are present, and near-duplicates never straddle two sets.

Only the packages of ``PACKAGES`` are ever fetched (``download`` refuses any other, so a package whose photos are
reserved for independent evaluation cannot slip in), and pictures whose names say heart or star (they could
look like the triggers; listed with ``set: excluded``).
Nothing here is committed: the build and the acceptance script read the cache.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

PACKAGES = ("gnome-backgrounds", "mate-backgrounds", "plasma-workspace-wallpapers", "tuxpaint-stamps-default")
"""Debian packages with real pictures. (gcompris-qt-data was tried: its pictures are inside Qt resource files,
only four documentation screenshots are loose, so it is not used.)"""


DEFAULT_CACHE = Path.home() / ".cache" / "spade-photos"
LONG_SIDE = 512
MIN_STAMP_SIDE = 150
"""Stamps smaller than this (short side, px) are kept only as decoy objects, not as photos (nor are pictures
of one colour, see ``flat``)."""
EXCLUDE = re.compile(r"heart|star|valentin", re.IGNORECASE)
SETS = ("build", "calibration", "heldout")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass(frozen=True)
class PhotoRecord:
    """One picture. id: file stem in the cache; kind: "wallpaper" or "stamp"; path: inside the package;
    photo: whether ``photos/<id>.jpg`` exists (else only ``objects/<id>.png``); split: one of SETS or
    "excluded"; size: (width, height) of the original."""

    id: str
    package: str
    version: str
    path: str
    group: str
    kind: str
    licence: str
    copyright: str
    size: tuple[int, int]
    photo: bool
    split: str


def split_of(group: str, build: int = 12, calibration: int = 3) -> str:
    """Deterministic set of a group: sha256 of its name mod 20 -> build (< build), calibration, else heldout."""
    h = int(hashlib.sha256(group.encode()).hexdigest(), 16) % 20
    return "build" if h < build else "calibration" if h < build + calibration else "heldout"


# ---------------------------------------------------------------------------------------------------------------
def download(package: str, cache: Path) -> Path:
    """The package's .deb in ``cache/debs`` (downloaded with ``apt-get download`` if missing); only the packages of
    ``PACKAGES``, whose licences and contents were checked, are fetched."""
    if package not in PACKAGES:
        raise SystemExit(f"{package} is not one of the photo packages ({', '.join(PACKAGES)}); only those are used.")
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package}_*.deb"))
    if not found:
        subprocess.run(["apt-get", "download", package], cwd=debs, check=True)
        found = sorted(debs.glob(f"{package}_*.deb"))
    return found[-1]


def unpack(deb: Path, cache: Path) -> Path:
    """``dpkg-deb -x`` the package into ``cache/x/<package>`` (once)."""
    dest = cache / "x" / deb.name.split("_")[0]
    if not dest.is_dir():
        dest.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    return dest


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], check=True, capture_output=True,
                          text=True).stdout.strip()


def dep5_stanzas(text: str) -> list[dict[str, str]]:
    """Paragraphs of a Debian copyright file as {field: value} (continuation lines joined with newlines)."""
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def licence_of(copyright_text: str, relpath: str) -> tuple[str, str]:
    """(licence, copyright holders) of ``relpath`` from a copyright file: the last machine-readable
    ``Files:`` paragraph whose pattern matches the path's end wins (DEP-5 order); for a file that is not
    machine-readable, a pointer to the file."""
    best = None
    for stanza in dep5_stanzas(copyright_text):
        patterns = stanza.get("Files", "").split()
        if any(p == "*" or fnmatch.fnmatch(relpath, "*" + p.lstrip("*")) or relpath.endswith("/" + p)
               for p in patterns):
            best = stanza
    if best is None:
        return "see the package's copyright file (not machine-readable)", ""
    return best.get("License", "").splitlines()[0], " / ".join(best.get("Copyright", "").splitlines())


def candidates(package: str, root: Path) -> Iterator[tuple[Path, str, str]]:
    """(file, group, kind) of the pictures worth using in an unpacked package."""
    if package == "plasma-workspace-wallpapers":
        for wall in sorted((root / "usr/share/wallpapers").iterdir()):
            images = [p for p in (wall / "contents/images").glob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
            sized = [(p, tuple(map(int, m.groups()))) for p in images if (m := re.match(r"(\d+)x(\d+)", p.stem))]
            landscape = [(p, wh) for p, wh in sized if wh[0] >= wh[1]]
            if landscape:
                yield min(landscape, key=lambda t: abs(t[1][0] - 1920))[0], f"plasma/{wall.name}", "wallpaper"
    elif package == "mate-backgrounds":
        for p in sorted((root / "usr/share/backgrounds/mate").rglob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES and not re.search(r"_\d+x\d+$", p.stem):
                yield p, f"mate/{re.sub(r'-(Light|Dark)$', '', p.stem)}", "wallpaper"
    elif package == "gnome-backgrounds":
        for p in sorted((root / "usr/share/backgrounds/gnome").glob("*")):
            if p.suffix.lower() in IMAGE_SUFFIXES:
                yield p, f"gnome/{re.sub(r'-[ld]$', '', p.stem)}", "wallpaper"
    elif package == "tuxpaint-stamps-default":
        stamps = root / "usr/share/tuxpaint/stamps"
        for p in sorted(stamps.rglob("*.png")):
            yield p, f"tuxpaint/{p.relative_to(stamps).with_suffix('')}", "stamp"


def on_white(image: Image.Image) -> Image.Image:
    """RGB version of a picture; transparent parts become white."""
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(canvas, rgba).convert("RGB")


def flat(image: Image.Image) -> bool:
    """Whether an RGB picture is (nearly) one colour, e.g. a wallpaper that is all transparency."""
    return max(band[1] - band[0] for band in image.getextrema()) < 8


def shrink(image: Image.Image, long_side: int = LONG_SIDE) -> Image.Image:
    scale = long_side / max(image.size)
    if scale >= 1:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def collect(cache: Path, packages: tuple[str, ...] = PACKAGES, log=print) -> list[PhotoRecord]:
    """Download, unpack, convert and list every picture of ``packages``; write the manifest. Idempotent."""
    (cache / "photos").mkdir(parents=True, exist_ok=True)
    (cache / "objects").mkdir(parents=True, exist_ok=True)
    records = []
    for package in packages:
        deb = download(package, cache)
        root = unpack(deb, cache)
        version = deb_version(deb)
        copyright_text = (root / f"usr/share/doc/{package}/copyright").read_text(errors="replace")
        count = 0
        for path, group, kind in candidates(package, root):
            rel = str(path.relative_to(root))
            licence, holders = licence_of(copyright_text, rel)
            pid = re.sub(r"[^A-Za-z0-9]+", "_", group).strip("_")
            with Image.open(path) as img:
                img.load()
                size = img.size
                is_photo = kind == "wallpaper" or min(size) >= MIN_STAMP_SIDE
                split = "excluded" if EXCLUDE.search(group) else split_of(group)
                if split != "excluded":
                    rgb = on_white(img)
                    is_photo = is_photo and not flat(rgb)
                    if is_photo and not (cache / "photos" / f"{pid}.jpg").exists():
                        shrink(rgb).save(cache / "photos" / f"{pid}.jpg", quality=92)
                    if kind == "stamp" and not (cache / "objects" / f"{pid}.png").exists():
                        shrink(img.convert("RGBA"), 256).save(cache / "objects" / f"{pid}.png")
            records.append(PhotoRecord(pid, package, version, "/" + rel, group, kind, licence, holders, size,
                                       is_photo, split))
            count += 1
        log(f"{package} {version}: {count} pictures")
    (cache / "manifest.json").write_text(json.dumps([asdict(r) for r in records], indent=1))
    return records


def load_manifest(cache: Path = DEFAULT_CACHE) -> list[PhotoRecord]:
    """The records written by ``collect``; FileNotFoundError with the command to run when missing."""
    path = cache / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"No photo manifest at {path}; run `python -m tools.photos` first.")
    return [PhotoRecord(**{**r, "size": tuple(r["size"])}) for r in json.loads(path.read_text())]


def photo_paths(split: str, cache: Path = DEFAULT_CACHE, kind: str | None = None) -> list[Path]:
    """Sorted RGB photo files of one set (optionally one kind: "wallpaper" or "stamp")."""
    return sorted(cache / "photos" / f"{r.id}.jpg" for r in load_manifest(cache)
                  if r.split == split and r.photo and (kind is None or r.kind == kind))


def object_paths(split: str, cache: Path = DEFAULT_CACHE) -> list[Path]:
    """Sorted RGBA stamp files (objects with transparency, for pasting as decoys) of one set."""
    return sorted(cache / "objects" / f"{r.id}.png" for r in load_manifest(cache)
                  if r.split == split and r.kind == "stamp")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.photos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    records = collect(args.cache)
    print(f"{'set':<12}{'photos':>8}{'objects':>9}  licences")
    for split in (*SETS, "excluded"):
        chosen = [r for r in records if r.split == split]
        licences = sorted({r.licence.split(" (")[0] for r in chosen})
        print(f"{split:<12}{sum(r.photo for r in chosen):>8}{sum(r.kind == 'stamp' for r in chosen):>9}  "
              f"{', '.join(licences)}")
    print(f"manifest: {args.cache / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
