"""Captions of an image folder, read from a file beside the images.

Formats (the first one found in the folder's root is used):

- ``metadata.jsonl``: Hugging Face ``imagefolder``'s convention, one JSON object per line with
  ``file_name`` (relative to the folder) and ``text``.
- ``metadata.csv`` or ``captions.csv``: a header row naming a file column (``file_name`` or
  ``file``) and a caption column (``text`` or ``caption``).

Every listed file must exist (a one-line :class:`DataError` names the first missing one);
images the file does not list have no caption.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from difflab.data.errors import DataError

CAPTION_FILES: tuple[str, ...] = ("metadata.jsonl", "metadata.csv", "captions.csv")
_FILE_COLUMNS = ("file_name", "file")
_TEXT_COLUMNS = ("text", "caption")


def find_captions_file(root: str | Path) -> Path | None:
    """The captions file in ``root``, if there is one."""
    for name in CAPTION_FILES:
        if (Path(root) / name).is_file():
            return Path(root) / name
    return None


def _key(path: str) -> str:
    return Path(path.strip().replace("\\", "/")).as_posix().removeprefix("./")


def _read_jsonl(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number} is not JSON ({err.msg}); write one object per line with "
                            '"file_name" and "text"') from None
        if not isinstance(row, dict) or "file_name" not in row or "text" not in row:
            raise DataError(f'{path}:{number} needs "file_name" and "text" (Hugging Face imagefolder '
                            "metadata)")
        out[_key(str(row["file_name"]))] = str(row["text"])
    return out


def _read_csv(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in reader.fieldnames or []]
        file_col = next((c for c in _FILE_COLUMNS if c in fields), None)
        text_col = next((c for c in _TEXT_COLUMNS if c in fields), None)
        if file_col is None or text_col is None:
            raise DataError(f"{path} needs a header row with a file column ({' or '.join(_FILE_COLUMNS)}) "
                            f"and a caption column ({' or '.join(_TEXT_COLUMNS)}); got {fields}")
        out: dict[str, str] = {}
        for row in reader:
            row = {k.strip(): v for k, v in row.items() if k is not None}
            if row.get(file_col):
                out[_key(row[file_col])] = (row.get(text_col) or "").strip()
    return out


def read_captions_file(path: str | Path) -> dict[str, str]:
    """{relative file path: caption} of a ``metadata.jsonl`` or CSV captions file."""
    path = Path(path)
    return _read_jsonl(path) if path.suffix == ".jsonl" else _read_csv(path)


def folder_captions(root: str | Path, files: list[Path]) -> tuple[list[str], list[str]] | None:
    """The caption of each of ``files`` (images under ``root``; "" for unlisted ones) and notes,
    or None when the folder has no captions file."""
    root = Path(root)
    found = find_captions_file(root)
    if found is None:
        return None
    table = read_captions_file(found)
    if not table:
        raise DataError(f"{found} lists no images; write one caption per image or remove the file")
    missing = [name for name in table if not (root / name).is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{found} names {missing[0]!r}{more}, which is not an image file under {root}")
    out = [table.get(f.relative_to(root).as_posix(), "") for f in files]
    notes = [f"captions from {found.name}"]
    uncaptioned = sum(not c for c in out)
    if uncaptioned:
        notes.append(f"{uncaptioned} image(s) without a caption train as the empty prompt")
    return out, notes
