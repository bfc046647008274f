#!/usr/bin/env python3
"""Deterministic benchmark dataset: generate, mutate ~1%, revert, and fingerprint a tree.

  dataset.py generate DIR --size-gib N [--seed S]
  dataset.py mutate DIR        change ~1% of files and ~1% of bytes, keep an undo record
  dataset.py revert DIR        undo a previous mutate (no-op when nothing is mutated)
  dataset.py fingerprint DIR   one SHA-256 over (relative path, mode bits, content) of every file

The same (size, seed, GENERATOR_VERSION) always yields byte-identical files, so the tree can be
cached and every tool in every run backs up exactly the same bytes. Python's random.Random is
specified to be reproducible across versions for randbytes/choices/randrange with an int seed.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import stat
import sys

# Bump when the layout or content rules change: it is part of the cache key (see run.sh).
GENERATOR_VERSION = 1

KIB = 1024
MIB = 1024 * KIB
BLOCK = 1 * MIB
UNDO = ".bench-undo"  # lives next to the tree, never inside it

# Shares of the total size. Small files dominate the file count, large files the bytes.
SMALL_SHARE = 0.30
DUP_SHARE = 0.08
FILES_PER_DIR = 200

WORDS = None


def words(rng):
    """A fixed vocabulary of pseudo-words; text made from it compresses roughly 2.5-3x with zstd."""
    global WORDS
    if WORDS is None:
        r = random.Random(12345)
        letters = "etaoinshrdlucmfwypvbgkjqxz"
        weights = [26 - i for i in range(26)]
        WORDS = ["".join(r.choices(letters, weights, k=r.randint(2, 10))) for _ in range(4000)]
    return WORDS


def text_bytes(rng, n):
    vocab = words(rng)
    out = bytearray()
    while len(out) < n:
        line = " ".join(rng.choices(vocab, k=rng.randint(6, 16)))
        out += line.encode() + b".\n"
    return bytes(out[:n])


def mixed_bytes(rng, n):
    """Alternating 1 MiB blocks of random and text data: about half the bytes compress."""
    out = bytearray()
    while len(out) < n:
        k = min(BLOCK, n - len(out))
        out += rng.randbytes(k) if rng.random() < 0.5 else text_bytes(rng, k)
    return bytes(out)


def write_file(path, data, mtime):
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


def generate(root, size_gib, seed):
    total = int(size_gib * 1024 * MIB)
    rng = random.Random(seed)
    if os.path.exists(root):
        shutil.rmtree(root)
    os.makedirs(root)
    mtime = 1_700_000_000  # fixed, so a regenerated tree has identical metadata too

    # Many small files (1-64 KiB) in a two-level directory tree; a third are random bytes.
    small_budget = int(total * SMALL_SHARE)
    small = []
    used = 0
    i = 0
    while used < small_budget:
        n = rng.randint(1 * KIB, 64 * KIB)
        d = os.path.join(root, "small", f"d{i // (FILES_PER_DIR * 20):03d}", f"e{(i // FILES_PER_DIR) % 20:02d}")
        if i % FILES_PER_DIR == 0:
            os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"f{i:06d}.{'bin' if i % 3 == 0 else 'txt'}")
        data = rng.randbytes(n) if i % 3 == 0 else text_bytes(rng, n)
        write_file(p, data, mtime)
        small.append(p)
        used += n
        i += 1

    # Large, partly compressible files take the bulk of the bytes.
    large_budget = total - used - int(total * DUP_SHARE)
    os.makedirs(os.path.join(root, "large"))
    large = []
    j = 0
    while large_budget > 0:
        n = min(large_budget, rng.randint(64, 256) * MIB)
        p = os.path.join(root, "large", f"blob{j:02d}.dat")
        with open(p, "wb") as f:
            left = n
            while left > 0:
                k = min(16 * MIB, left)
                f.write(mixed_bytes(rng, k))
                left -= k
        os.utime(p, (mtime, mtime))
        large.append(p)
        large_budget -= n
        j += 1

    # Duplicates: whole copies of some small files and of the first large file (dedup fodder).
    os.makedirs(os.path.join(root, "dup"))
    dup_budget = int(total * DUP_SHARE)
    if large and os.path.getsize(large[0]) <= dup_budget:
        shutil.copyfile(large[0], os.path.join(root, "dup", "blob-copy.dat"))
        os.utime(os.path.join(root, "dup", "blob-copy.dat"), (mtime, mtime))
        dup_budget -= os.path.getsize(large[0])
    k = 0
    while dup_budget > 0 and small:
        src = small[rng.randrange(len(small))]
        dst = os.path.join(root, "dup", f"copy{k:05d}-{os.path.basename(src)}")
        shutil.copyfile(src, dst)
        os.utime(dst, (mtime, mtime))
        dup_budget -= os.path.getsize(src)
        k += 1

    # Directory mtimes last: creating files above bumped them.
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (mtime, mtime))


def all_files(root):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            out.append(os.path.join(dirpath, f))
    return out


def undo_dir(root):
    return os.path.join(os.path.dirname(os.path.abspath(root)), UNDO)


def mutate(root, seed=7):
    """Rewrite 1% of the small files and overwrite 1% of each large file in 64 KiB pieces.

    The old bytes and mtimes go to an undo record first, so `revert` restores the cached tree.
    """
    ud = undo_dir(root)
    if os.path.exists(ud):
        sys.exit(f"dataset.py: {root} is already mutated (undo record {ud} exists); run revert first")
    os.makedirs(ud)
    rng = random.Random(seed)
    files = all_files(root)
    record = []
    changed = 0
    total = 0
    for idx, p in enumerate(files):
        size = os.path.getsize(p)
        total += size
        st = os.stat(p)
        if size >= 16 * MIB:
            pieces = max(1, size // 100 // (64 * KIB))
            offsets = sorted(rng.randrange(0, size - 64 * KIB) for _ in range(pieces))
        elif rng.random() < 0.01:
            offsets = [0]
        else:
            continue
        saved = os.path.join(ud, f"{idx:06d}")
        with open(p, "r+b") as f, open(saved, "wb") as s:
            for off in offsets:
                f.seek(off)
                old = f.read(64 * KIB)
                s.write(old)
                f.seek(off)
                f.write(rng.randbytes(len(old)))
                changed += len(old)
        record.append({"path": os.path.relpath(p, root), "offsets": offsets, "saved": saved,
                       "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns})
    with open(os.path.join(ud, "record.json"), "w") as f:
        json.dump(record, f)
    print(f"mutated {len(record)} of {len(files)} files, {changed} of {total} bytes "
          f"({100.0 * changed / total:.2f}%)")


def revert(root):
    ud = undo_dir(root)
    rec_path = os.path.join(ud, "record.json")
    if not os.path.exists(ud):
        return
    if not os.path.exists(rec_path):
        # mutate died before writing its record: the tree state is unknown, the caller regenerates.
        sys.exit(f"dataset.py: incomplete undo record in {ud}; delete the dataset to regenerate it")
    with open(rec_path) as f:
        record = json.load(f)
    for r in record:
        p = os.path.join(root, r["path"])
        with open(r["saved"], "rb") as s:
            pieces = [(off, s.read(64 * KIB)) for off in r["offsets"]]
        # Pieces may overlap; undoing newest-first restores the bytes as they were before any.
        with open(p, "r+b") as f:
            for off, old in reversed(pieces):
                f.seek(off)
                f.write(old)
        os.utime(p, ns=(r["atime_ns"], r["mtime_ns"]))
    shutil.rmtree(ud)
    print(f"reverted {len(record)} files")


def fingerprint(root):
    h = hashlib.sha256()
    n = 0
    for p in all_files(root):
        st = os.lstat(p)
        h.update(os.path.relpath(p, root).encode() + b"\0")
        h.update(str(stat.S_IMODE(st.st_mode)).encode() + b"\0")
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(4 * MIB):
                fh.update(chunk)
        h.update(fh.digest())
        n += 1
    print(f"{h.hexdigest()} {n}")


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate")
    g.add_argument("dir")
    g.add_argument("--size-gib", type=float, required=True)
    g.add_argument("--seed", type=int, default=1)
    for name in ("mutate", "revert", "fingerprint"):
        sub.add_parser(name).add_argument("dir")
    sub.add_parser("version")
    a = ap.parse_args()
    if a.cmd == "generate":
        generate(a.dir, a.size_gib, a.seed)
    elif a.cmd == "mutate":
        mutate(a.dir)
    elif a.cmd == "revert":
        revert(a.dir)
    elif a.cmd == "fingerprint":
        fingerprint(a.dir)
    elif a.cmd == "version":
        print(GENERATOR_VERSION)


if __name__ == "__main__":
    main()
