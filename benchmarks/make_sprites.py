"""Cut the tile sheets of Debian's ``crawl-tiles-data`` into a folder of 32x32 colour sprites, one
subfolder per sheet (so the sheet is the class label), fully transparent cells dropped.

    sudo apt-get install crawl-tiles-data
    python benchmarks/make_sprites.py --out runs/sprites       # then --data folder:runs/sprites
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

TILES = Path("/usr/share/crawl/dat/tiles")
SHEETS = ("main", "player", "floor", "wall", "feat")


def cut(sheet: Path, out: Path, size: int = 32) -> int:
    """Write every non-empty ``size`` x ``size`` cell of ``sheet`` (RGBA) to ``out``; the count."""
    im = np.asarray(Image.open(sheet).convert("RGBA"))
    out.mkdir(parents=True, exist_ok=True)
    kept = 0
    for y in range(0, im.shape[0] - size + 1, size):
        for x in range(0, im.shape[1] - size + 1, size):
            cell = im[y : y + size, x : x + size]
            if cell[..., 3].max() == 0:
                continue
            Image.fromarray(cell).save(out / f"{y // size:03d}_{x // size:03d}.png")
            kept += 1
    return kept


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiles", type=Path, default=TILES)
    p.add_argument("--out", type=Path, default=Path("runs/sprites"))
    args = p.parse_args()
    if not args.tiles.is_dir():
        raise SystemExit(f"{args.tiles} does not exist: install the tiles first "
                         "(apt-get install crawl-tiles-data)")
    total = 0
    for name in SHEETS:
        n = cut(args.tiles / f"{name}.png", args.out / name)
        print(f"{name}: {n} sprites")
        total += n
    print(f"{total} sprites in {args.out}")


if __name__ == "__main__":
    main()
