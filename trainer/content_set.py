"""Write the small content-photo set that ships in ``trainer/content/`` (for learning a new painting
on a fresh clone, where no photo folder exists), with a credit row per photo.

    python -m trainer.content_set --data ../shared/data --out trainer/content

The photos are GCompris' Wikimedia Commons photographs (monuments and animals), whose per-file
credits (author, source, licence) are in the package's resource READMEs; only CC-BY, CC-BY-SA,
CC0 and public-domain files are taken. Each is scaled to a short side of ``--short`` px
(JPEG): ``add-style`` crops at 160 px from a 240 px working size, so more is wasted bytes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from common.split import held_out
from trainer.data import load_rgb, training_files

FOLDERS = {  # content folder -> the README with its per-file credits (under attribution/)
    "gcompris-qt-data__explore_monuments": "gcompris/explore_monuments/explore_monuments/resource/README",
    "gcompris-qt-data__erase": "gcompris/erase/erase/resource/README",
}
FREE = re.compile(r"^(CC-?BY(-SA)?[- ]?\d(\.\d)?|CC0(-1\.0)?|Public Domain)$", re.IGNORECASE)


@dataclass(frozen=True)
class Credit:
    file: str  # the file shipped
    source_file: str  # its name in the package
    author: str
    licence: str
    source: str  # the original's address


def parse_credits(readme: Path) -> dict[str, dict[str, str]]:
    """File name -> {Copyright, License, Source} from a Debian-style credits README."""
    out: dict[str, dict[str, str]] = {}
    for block in readme.read_text(encoding="utf-8").split("\n\n"):
        fields: dict[str, str] = {}
        files: list[str] = []
        in_files = False
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() in ("Copyright", "License", "Source", "Comments", "Files"):
                in_files = key.strip() == "Files"
                if in_files:
                    files += value.split()
                else:
                    fields[key.strip()] = value.strip()
            elif in_files and line.strip():
                files += line.split()
        for f in files:
            out[Path(f).name] = fields
    return out


def choose(data: Path, per_folder: int) -> list[tuple[Path, dict[str, str]]]:
    """Up to ``per_folder`` freely licensed photos of each folder, spread over its sorted files.

    Only photos that training may use (``trainer.data.training_files``): the benches judge on
    the held-out ones, and a style learned on this set must not have seen them.
    """
    allowed = set(training_files(data / "content", held_out))
    chosen = []
    for folder, readme in FOLDERS.items():
        credits = parse_credits(data / "attribution" / readme)
        files = [
            p
            for p in sorted((data / "content" / folder).iterdir())
            if p in allowed
            and p.name in credits
            and FREE.match(credits[p.name].get("License", ""))
            and credits[p.name].get("Source")
        ]
        step = max(1, len(files) // per_folder)
        chosen += [(p, credits[p.name]) for p in files[::step][:per_folder]]
    return chosen


def write_set(data: Path, out: Path, per_folder: int, short: int) -> list[Credit]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path, credit in choose(data, per_folder):
        name = f"{path.stem}.jpg"
        load_rgb(path, short_side=short).save(out / name, quality=88)
        rows.append(Credit(name, path.name, credit.get("Copyright", "?"), credit["License"], credit["Source"]))
    table = [
        "# Content photos shipped for learning new paintings",
        "",
        "`python -m trainer add-style` and the server's *Add a painting* learn on these when no",
        "`--content` folder is given. Scaled copies (short side "
        f"{short} px) of photographs from Wikimedia Commons, as distributed in Debian's `gcompris-qt-data`",
        "(activities `explore_monuments` and `erase`), with the credits from that package; each",
        "scaled copy keeps its original's licence.",
        "Written by `python -m trainer.content_set`.",
        "",
        "| file | author | licence | source |",
        "| --- | --- | --- | --- |",
        *(f"| `{r.file}` | {r.author} | {r.licence} | <{r.source}> |" for r in rows),
        "",
    ]
    (out / "CREDITS.md").write_text("\n".join(table), encoding="utf-8")
    (out / "credits.json").write_text(json.dumps([asdict(r) for r in rows], indent=1), encoding="utf-8")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer.content_set", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--data", type=Path, required=True, help="the training material (with content/ and attribution/)")
    p.add_argument("--out", type=Path, required=True, help="folder to write (trainer/content)")
    p.add_argument("--per-folder", type=int, default=16, help="photos per source folder (default: 16)")
    p.add_argument("--short", type=int, default=384, help="short side in px (default: 384)")
    args = p.parse_args(argv)
    rows = write_set(args.data, args.out, args.per_folder, args.short)
    size = sum(f.stat().st_size for f in args.out.glob("*.jpg"))
    print(f"wrote {len(rows)} photos ({size / 1e6:.1f} MB) and CREDITS.md to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
