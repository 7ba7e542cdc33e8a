"""The published-model registry a swapper UI reads: `models/trained/` plus `index.json`.

Publishing copies verified files out of the store. Each file is written atomically and only
when its bytes differ (re-publishing the same model is a no-op); the index is rewritten last,
so a crash mid-publish never lists a model whose files are not all in place.
"""

from __future__ import annotations

import json
from pathlib import Path

from facepipe.store import atomic_write_bytes, canonical_json, file_sha256

TRAINED = "trained"
INDEX = "index.json"


def publish(models_root: Path, name: str, files: list[Path], entry: dict) -> dict:
    """Copy `files` into models/trained/ and list them under `name` in index.json.

    Returns {"written": [...], "unchanged": [...]} file names.
    """
    folder = Path(models_root) / TRAINED
    folder.mkdir(parents=True, exist_ok=True)
    written, unchanged = [], []
    for source in files:
        target = folder / source.name
        if target.is_file() and file_sha256(target) == file_sha256(source):
            unchanged.append(source.name)
            continue
        atomic_write_bytes(target, source.read_bytes())
        written.append(source.name)
    index_path = folder / INDEX
    index = json.loads(index_path.read_text()) if index_path.is_file() else {"models": {}}
    record = {**entry, "files": sorted(f.name for f in files)}
    if index["models"].get(name) != json.loads(canonical_json(record)):
        index["models"][name] = record
        atomic_write_bytes(index_path, json.dumps(index, indent=2, sort_keys=True).encode())
    return {"written": written, "unchanged": unchanged}


def read_index(models_root: Path) -> dict:
    path = Path(models_root) / TRAINED / INDEX
    return json.loads(path.read_text()) if path.is_file() else {"models": {}}
