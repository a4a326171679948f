"""What a split's images and labels are, as a digest that changes whenever they may have: the key
under which :mod:`suite.features` caches features.

- :func:`identity`: the dataset as an exact id, without listing anything: a ``folder:`` tree by
  its resolved path, a paper dataset by its name and resolved data root, a synthetic set by its
  name. It names the cache folder, so two datasets never share a file.
- :func:`split_fingerprint`: the identity, the split, and its content:

  - on-disk datasets (``folder:`` trees, the paper's datasets): the ``(file, label)`` list of the
    split exactly as :func:`suite.data.load_split` gives it — so the seeded hold-out (``seed``,
    ``val_fraction``), a shipped val split and Caltech-101's per-class draw are covered — with
    every file's size and modification time (ns). CIFAR's images are rows of pickled arrays:
    its ``(row, label)`` list, and the size and mtime of every file under its folder.
  - synthetic sets: the generator's parameters (:func:`suite.data.synthetic.params`: version,
    seeds, sizes, classes, normalisation), which define their tensors.

Why size and mtime are enough for a file: any write to a file — rewritten in place, copied over,
a new file renamed onto its name — sets its mtime to the time of the write, so a replaced file
looks the same only if something deliberately restores both its old size and its old mtime
(``cp -p`` / ``rsync -a`` from a copy with the same timestamp), or if it is rewritten with the
same size within the file system's timestamp resolution of the fingerprint being taken (ns on
ext4/XFS, 1-2 s on FAT/HFS+). It is the test ``make`` and ``rsync`` rely on; hashing the bytes
instead would read every image on every reuse, most of the I/O extraction itself does.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

# The readable parts of a fingerprint, in the order a change is reported.
_READABLE = ("dataset", "root", "split", "n", "bytes", "newest")
_NAMES = {"n": "images", "newest": "newest mtime"}


def identity(name: str, root: str = "") -> dict:
    """``{"dataset", "root"}``: the exact id of a dataset. ``folder:`` paths are resolved
    (``folder:~/x`` and ``folder:/home/u/x`` are one tree); the data root counts only for the
    paper's datasets (synthetic sets and folder trees do not read it). Unknown names are kept
    as given (nothing is checked here)."""
    from suite.data import FOLDER_PREFIX, PAPER

    if name.startswith(FOLDER_PREFIX):
        path = Path(name[len(FOLDER_PREFIX):]).expanduser().resolve()
        return {"dataset": f"{FOLDER_PREFIX}{path}", "root": ""}
    if name in PAPER:
        return {"dataset": name, "root": str(Path(root).expanduser().resolve()) if root else ""}
    return {"dataset": name, "root": ""}


def _label(target) -> str:
    if torch.is_tensor(target):
        target = target.tolist()  # VOC2007: (20,) 0/1
    return json.dumps(target)


def _stat(path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return -1, -1  # missing: load_split reports it; here it only has to differ
    return st.st_size, st.st_mtime_ns


def _content(samples, files: bool, sources=()) -> tuple[dict, Any]:
    """(readable summary, sha256 over one line per sample and per source file)."""
    h = hashlib.sha256()
    total, newest = 0, -1
    for key, target in samples:
        if files:
            size, mtime = _stat(key)
            total, newest = total + max(size, 0), max(newest, mtime)
            h.update(f"{key}\t{_label(target)}\t{size}\t{mtime}\n".encode())
        else:
            h.update(f"{key}\t{_label(target)}\n".encode())
    for path in sources:  # the files in-memory rows are read from
        size, mtime = _stat(path)
        total, newest = total + max(size, 0), max(newest, mtime)
        h.update(f"source\t{path}\t{size}\t{mtime}\n".encode())
    stamp = (datetime.datetime.fromtimestamp(newest / 1e9).isoformat(timespec="milliseconds")
             if newest >= 0 else "")
    return {"n": len(samples), "bytes": total, "newest": stamp}, h


def split_fingerprint(name: str, split: str, *, root: str = "", seed: int = 0,
                      val_fraction: float = 0.2, loaded=None) -> dict:
    """Fingerprint of one split (see the module docstring): the readable parts ``kind``,
    ``dataset``, ``root``, ``split``, ``n`` (images), and ``bytes`` + ``newest`` (latest mtime)
    for on-disk sets or ``generator`` (:func:`suite.data.synthetic.params`) for synthetic ones,
    plus ``digest`` (sha256 hex of all of it and every sample). Equal digests: the same images
    with the same labels in the same order.

    The sample list comes from the directory listing and annotation files (no image is opened;
    CIFAR's index reads its pickles); ``loaded``, the split as :func:`suite.data.load_split`
    returned it, is used instead when given (with ``skip_corrupt`` its list lacks the files
    left out).
    """
    from suite.data import FOLDER_PREFIX, PAPER, SYNTHETIC, _unknown

    fp: dict = {**identity(name, root), "split": split}
    if name in SYNTHETIC:
        from suite.data import synthetic

        fp["kind"] = "synthetic"
        fp["generator"] = synthetic.params(name, split)
        fp["n"] = sum(p["n"] for p in fp["generator"]["parts"])
        h = hashlib.sha256()
    elif name.startswith(FOLDER_PREFIX) or name in PAPER:
        sources: list[str] = []
        if loaded is not None:
            samples = loaded.samples
            files = not hasattr(loaded, "arrays")
        elif name.startswith(FOLDER_PREFIX):
            from suite.data.folder import folder_samples

            samples, files = folder_samples(name[len(FOLDER_PREFIX):], split, seed=seed,
                                            val_fraction=val_fraction), True
        else:
            from suite.data import paper

            idx = paper.index(name, root)
            samples = paper.split_samples(idx, split, seed=seed, val_fraction=val_fraction)
            files = idx.files
        if not files:  # CIFAR: rows of arrays read from the files under its folder
            from suite.data.paper import LOCATIONS

            base = Path(root).expanduser() / LOCATIONS[name]
            sources = sorted(str(p) for p in base.rglob("*") if p.is_file())
        fp["kind"] = "folder" if name.startswith(FOLDER_PREFIX) else "paper"
        summary, h = _content(samples, files, sources)
        fp.update(summary)
    else:
        raise _unknown(name)
    h.update(json.dumps(fp, sort_keys=True).encode())
    fp["digest"] = h.hexdigest()
    return fp


def describe_change(stored: dict, current: dict) -> str:
    """What differs between two fingerprints, for a log line ("images 10 -> 30, ...")."""
    if not stored.get("digest"):
        return "no fingerprint of the data recorded"
    changed = [k for k in _READABLE if stored.get(k) != current.get(k)]
    parts = [f"{_NAMES.get(k, k)} {stored.get(k)} -> {current.get(k)}" for k in changed]
    if stored.get("generator") != current.get("generator"):
        parts.append("generator parameters changed")
    elif "n" not in changed:
        # Same count: some file's bytes, name or label differ.
        parts.append("same number of images: a file was replaced, renamed or relabelled")
    return ", ".join(parts)


__all__ = ["describe_change", "identity", "split_fingerprint"]
