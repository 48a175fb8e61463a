#!/usr/bin/env python3
"""Build Ember's CUDA kernels ahead of time, or check that the committed build is current.

    python3 scripts/build_kernels.py           # compile every src/ember/kernels/*.cu
    python3 scripts/build_kernels.py --check   # exit 1 if a source changed without a rebuild

Each `<family>.cu` becomes one cubin per shipped SM (`<family>.sm_<XY>.cubin`) and one PTX for
newer GPUs (`<family>.compute_80.ptx`) in src/ember/kernels/bin/, next to manifest.json, which
records the nvcc release and flags, the sha256 of each source and of each local header it
includes (recursively), the sha256 of each artifact, and each family's interface: its kernels'
parameter types, constants and struct layouts, read out of its PTX (interface.cuh's exports,
ember.kernels.interface), which the Python wrappers take their signatures and sizes from.

--check always compares the hashes in the manifest with the sources, headers and artifacts on
disk, and the manifest's interfaces with those read again out of the PTX. Where nvcc of the
manifest's release is on PATH, it also rebuilds into a temporary folder and compares the outputs
byte for byte. With nvcc 13.0.88 both PTX and cubins came out byte-identical across two builds,
across source folders and across two x86-64 machines (checked 2026-11-23), so the comparison
covers cubins too. Without nvcc (CI), or with another release, only hashes and interfaces are
checked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from ember.errors import CudaError  # noqa: E402
from ember.gpu.module import PTX_SM, SHIPPED_SMS, cubin_filename, ptx_filename  # noqa: E402
from ember.kernels.interface import FamilyInterface  # noqa: E402

KERNELS_DIR = REPO / "src" / "ember" / "kernels"
MANIFEST = "manifest.json"
# No -lineinfo or -G: both embed the source path, which would make artifacts depend on where
# the repository is checked out. No --use_fast_math: kernels are checked against NumPy.
NVCC_FLAGS = ("-O3", "-std=c++17")
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Job:
    """One nvcc invocation: a source to one artifact."""

    source: str
    output: str
    target_flags: tuple[str, ...]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def local_includes(source: Path, seen: set[str] | None = None) -> list[str]:
    """Names of the headers in the kernels folder that `source` includes, directly or not."""
    seen = set() if seen is None else seen
    for name in _INCLUDE.findall(source.read_text()):
        header = source.parent / name
        if name not in seen and header.is_file():
            seen.add(name)
            local_includes(header, seen)
    return sorted(seen)


def jobs_for(source: str) -> list[Job]:
    family = source.removesuffix(".cu")
    jobs = [
        Job(source, cubin_filename(family, sm), ("--cubin", f"-arch=sm_{sm}")) for sm in SHIPPED_SMS
    ]
    jobs.append(Job(source, ptx_filename(family), ("--ptx", f"-arch=compute_{PTX_SM}")))
    return jobs


def nvcc_release(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"release [\d.]+, V([\d.]+)", out)
    return match.group(1) if match else out.strip().splitlines()[-1]


def compile_all(nvcc: str, kernels_dir: Path, sources: list[str], out_dir: Path) -> list[str]:
    """Compile every job in parallel into out_dir; returns the artifact names."""
    jobs = [job for source in sources for job in jobs_for(source)]

    def run(job: Job) -> None:
        # Relative paths from the kernels folder keep the build independent of the checkout.
        cmd = [nvcc, *NVCC_FLAGS, *job.target_flags, "-o", str(out_dir / job.output), job.source]
        done = subprocess.run(cmd, cwd=kernels_dir, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"nvcc failed on {job.source} -> {job.output}:\n{done.stderr}")

    with ThreadPoolExecutor() as pool:
        list(pool.map(run, jobs))
    for job in jobs:
        # Anonymous-namespace symbols are named after a hash of the source's path, so such PTX
        # would differ in every checkout and fail the artifact check of a fresh clone.
        if job.output.endswith(".ptx") and "_GLOBAL__N_" in (out_dir / job.output).read_text():
            raise SystemExit(
                f"{job.source}: its PTX names a symbol of an anonymous namespace; use a named "
                "namespace so that the build does not depend on where the checkout lies"
            )
    return [job.output for job in jobs]


def describe(nvcc: str, kernels_dir: Path, sources: list[str], bin_dir: Path) -> dict[str, object]:
    manifest_sources = {}
    for source in sources:
        path = kernels_dir / source
        manifest_sources[source] = {
            "sha256": sha256(path),
            "includes": {h: sha256(kernels_dir / h) for h in local_includes(path)},
            "artifacts": [job.output for job in jobs_for(source)],
        }
    artifacts = {job.output: sha256(bin_dir / job.output) for s in sources for job in jobs_for(s)}
    return {
        "nvcc": nvcc_release(nvcc),
        "nvcc_flags": list(NVCC_FLAGS),
        "sources": manifest_sources,
        "artifacts": dict(sorted(artifacts.items())),
        "interfaces": interfaces(bin_dir, sources),
    }


def interfaces(bin_dir: Path, sources: list[str]) -> dict[str, object]:
    """Each family's interface, read out of its PTX (SystemExit where it does not hold)."""
    found = {}
    for source in sources:
        family = source.removesuffix(".cu")
        try:
            ptx = (bin_dir / ptx_filename(family)).read_text()
            found[family] = FamilyInterface.from_ptx(family, ptx).to_json()
        except (CudaError, OSError) as exc:
            raise SystemExit(f"{source}: {exc}") from exc
    return found


def find_sources(kernels_dir: Path) -> list[str]:
    return sorted(path.name for path in kernels_dir.glob("*.cu"))


def build(nvcc: str, kernels_dir: Path, only: list[str] | None = None) -> None:
    """Build every family, or only the `only` families (their sources' names without .cu) while
    keeping the others' artifacts; the manifest always describes them all."""
    bin_dir = kernels_dir / "bin"
    sources = find_sources(kernels_dir)
    chosen = sources if only is None else [f"{family}.cu" for family in only]
    unknown = sorted(set(chosen) - set(sources))
    if unknown:
        raise SystemExit(f"no such kernel source: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        outputs = compile_all(nvcc, kernels_dir, chosen, Path(tmp))
        bin_dir.mkdir(exist_ok=True)
        keep = {job.output for s in sources if s not in chosen for job in jobs_for(s)}
        for stale in bin_dir.iterdir():
            if stale.name not in keep:
                stale.unlink()
        for name in outputs:
            shutil.copyfile(Path(tmp) / name, bin_dir / name)
    manifest = describe(nvcc, kernels_dir, sources, bin_dir)
    (bin_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    print(f"built {len(outputs)} artifacts from {len(sources)} source(s) into {bin_dir}")


def check_hashes(kernels_dir: Path, manifest: dict[str, object]) -> list[str]:
    problems: list[str] = []
    bin_dir = kernels_dir / "bin"
    recorded = manifest["sources"]
    assert isinstance(recorded, dict)
    sources = find_sources(kernels_dir)
    for source in sorted(set(recorded) - set(sources)):
        problems.append(f"{source} is in the manifest but no longer exists")
    for source in sources:
        entry = recorded.get(source)
        if entry is None:
            problems.append(f"{source} was never built")
            continue
        if sha256(kernels_dir / source) != entry["sha256"]:
            problems.append(f"{source} changed since the last build")
        includes = local_includes(kernels_dir / source)
        if includes != sorted(entry["includes"]):
            problems.append(
                f"{source} includes {includes}, the build saw {sorted(entry['includes'])}"
            )
        for header in includes:
            if sha256(kernels_dir / header) != entry["includes"].get(header):
                problems.append(f"{header} (included by {source}) changed since the last build")
        expected = [job.output for job in jobs_for(source)]
        if expected != entry["artifacts"]:
            problems.append(f"{source}: the artifacts to build changed (shipped SMs or PTX target)")
    if list(NVCC_FLAGS) != manifest["nvcc_flags"]:
        problems.append(f"nvcc flags changed: {manifest['nvcc_flags']} -> {list(NVCC_FLAGS)}")
    artifacts = manifest["artifacts"]
    assert isinstance(artifacts, dict)
    for name, digest in artifacts.items():
        path = bin_dir / name
        if not path.is_file():
            problems.append(f"bin/{name} is missing")
        elif sha256(path) != digest:
            problems.append(f"bin/{name} does not match its hash in the manifest")
    on_disk = {path.name for path in bin_dir.iterdir()} - {MANIFEST}
    for name in sorted(on_disk - set(artifacts)):
        problems.append(f"bin/{name} is not in the manifest (left over from an old build?)")
    if not problems:
        problems += check_interfaces(bin_dir, sources, manifest)
    return problems


def check_interfaces(bin_dir: Path, sources: list[str], manifest: dict[str, object]) -> list[str]:
    """The manifest's interfaces against those read again out of the committed PTX."""
    recorded = manifest.get("interfaces", {})
    assert isinstance(recorded, dict)
    try:
        current = interfaces(bin_dir, sources)
    except SystemExit as exc:
        return [str(exc)]
    return [
        f"the manifest's interface of {family} differs from its PTX's"
        for family in sorted(set(current) | set(recorded))
        if current.get(family) != recorded.get(family)
    ]


def check_rebuild(nvcc: str, kernels_dir: Path, manifest: dict[str, object]) -> list[str]:
    release = nvcc_release(nvcc)
    if release != manifest["nvcc"]:
        print(f"note: nvcc {release} is not the manifest's {manifest['nvcc']}: rebuild skipped")
        return []
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in compile_all(nvcc, kernels_dir, find_sources(kernels_dir), Path(tmp)):
            committed = kernels_dir / "bin" / name
            if committed.is_file() and committed.read_bytes() != (Path(tmp) / name).read_bytes():
                problems.append(f"bin/{name} differs from a fresh build with nvcc {release}")
    return problems


def check(nvcc: str | None, kernels_dir: Path, rebuild: bool) -> int:
    manifest_path = kernels_dir / "bin" / MANIFEST
    if not manifest_path.is_file():
        print(f"error: {manifest_path} is missing: run python3 scripts/build_kernels.py")
        return 1
    manifest = json.loads(manifest_path.read_text())
    problems = check_hashes(kernels_dir, manifest)
    if not problems and rebuild and nvcc is not None:
        problems = check_rebuild(nvcc, kernels_dir, manifest)
    if problems:
        print("error: the built kernels are out of date:")
        for problem in problems:
            print(f"  - {problem}")
        print("rebuild with: python3 scripts/build_kernels.py (and commit src/ember/kernels/bin)")
        return 1
    how = "hashes and a fresh build" if rebuild and nvcc else "hashes (no rebuild)"
    print(f"ok: {len(manifest['artifacts'])} kernel artifacts match their sources ({how})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="verify, do not build")
    parser.add_argument("--no-rebuild", action="store_true", help="with --check: hashes only")
    parser.add_argument("--nvcc", default=shutil.which("nvcc"), help="nvcc to use")
    parser.add_argument(
        "--only", help="comma-separated families to rebuild (e.g. quant_gemv), keeping the rest"
    )
    parser.add_argument("--kernels-dir", type=Path, default=KERNELS_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    kernels_dir = args.kernels_dir.resolve()
    if args.check:
        return check(args.nvcc, kernels_dir, rebuild=not args.no_rebuild)
    if args.nvcc is None:
        print("error: nvcc not found on PATH (CUDA toolkit 13.0 needed to build kernels)")
        return 1
    build(args.nvcc, kernels_dir, args.only.split(",") if args.only else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
