#!/usr/bin/env bash
# Builds, on a CPU machine, the wheels the GPU machine lacks, for CPython 3.12 on x86-64, into OUT_DIR.
#
#   bash benchmarks/gpu/bundle.sh OUT_DIR        (from the repository root, with the project's venv active)
#
# The GPU machine (one H200, no network) has Python 3.12 with torch, tokenizers, safetensors, accelerate, peft,
# huggingface_hub, pyarrow, pandas, numpy, networkx, tqdm, pyyaml, jinja2, regex, typer, matplotlib and tensorboard.
# It lacks the project, the ALFWorld engine (alfworld, textworld and what textworld needs) and a transformers new
# enough for the project (it has 5.17; pyproject asks >= 5.20). This script gathers exactly those:
#   - the project itself (`pip wheel --no-deps .`),
#   - wheels from the package registry for cp312 / manylinux x86-64 (pure-Python ones are any-platform),
#   - jericho and fast-downward-textworld, which the registry ships only as sources: built here (pip reuses the
#     wheels it built when the project was installed); both are `py3-none-any` and fast-downward's planner is a
#     plain x86-64 executable, so a build on this Python serves Python 3.12 there.
# spaCy is not bundled: jericho imports it only for its own text helpers, which the project never calls. Nor is
# anything compiled for one Python (regex, tokenizers...): transformers 5.24's import-time checks (regex >= 2025.10,
# tokenizers 0.23, huggingface_hub >= 1.31, safetensors >= 0.8) are met by what the machine has, and a bundle of
# py3 wheels also installs on this machine's Python, where the kit's test runs it.
# It then checks the bundle: one wheel per distribution, every expected one present, and under 60 MiB in all (the
# GPU machine takes at most 64 MiB beside the repository). benchmarks/gpu/run.sh installs it there.
set -euo pipefail

OUT_DIR=${1:?usage: bundle.sh OUT_DIR}
LIMIT_MIB=${BUNDLE_LIMIT_MIB:-60}
PYTHON=${PYTHON:-python3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

# name==version for the registry's wheels; versions are the ones this project is tested with.
REGISTRY_WHEELS=(
  alfworld==0.4.2
  textworld==1.7.0
  tatsu==5.8.3
  hashids==1.3.1
  mementos==1.3.1
  more-itertools==11.2.1
  prompt_toolkit==3.0.53
  wcwidth==0.9.4
  termcolor==3.3.0
  transformers==5.24.0
)
SOURCE_BUILT=(jericho==3.3.1 fast-downward-textworld==20.6.4)

mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
rm -f "$OUT_DIR"/*.whl

"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d "$OUT_DIR" "${REGISTRY_WHEELS[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w "$OUT_DIR" "${SOURCE_BUILT[@]}"
"$PYTHON" -m pip wheel -q --no-deps -w "$OUT_DIR" "$ROOT"

"$PYTHON" - "$OUT_DIR" "$LIMIT_MIB" "${REGISTRY_WHEELS[@]}" "${SOURCE_BUILT[@]}" agentprm <<'EOF'
"""Check the bundle: each expected distribution exactly once, every wheel installable on CPython 3.12 / x86-64
(manylinux 2.28, the GPU machine's glibc is newer), and the size limit."""
import sys
from pathlib import Path

from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

folder, limit_mib, expected = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
platforms = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64",
             "linux_x86_64"]
target = set(cpython_tags((3, 12), platforms=platforms)) | set(compatible_tags((3, 12), "cp312", platforms))
wheels = sorted(folder.glob("*.whl"))
found: dict[str, list[str]] = {}
for wheel in wheels:
    name, _, _, tags = parse_wheel_filename(wheel.name)
    found.setdefault(canonicalize_name(name), []).append(wheel.name)
    if not tags & target:
        sys.exit(f"bundle: {wheel.name} does not install on CPython 3.12 / x86-64")
missing = [e for e in expected if canonicalize_name(e.split("==")[0]) not in found]
doubles = [names for names in found.values() if len(names) > 1]
if missing:
    sys.exit(f"bundle: missing wheels for {', '.join(missing)}")
if doubles:
    sys.exit(f"bundle: more than one wheel of a distribution: {doubles}")
size_mib = sum(w.stat().st_size for w in wheels) / 2 ** 20
for wheel in wheels:
    print(f"  {wheel.stat().st_size / 2 ** 20:6.2f} MiB  {wheel.name}")
print(f"bundle: {len(wheels)} wheels, {size_mib:.1f} MiB (limit {limit_mib:g} MiB) in {folder}")
if size_mib > limit_mib:
    sys.exit(f"bundle: {size_mib:.1f} MiB is over the {limit_mib:g} MiB limit")
EOF
