#!/usr/bin/env bash
# An environment for deep-river, for bench/river_pipeline.py only: deep-river 0.3.4 pins
# torch < 2.6 and imports river.anomaly.base (gone from current river), so it gets river 0.22 of
# its own and reuses the torch, numpy and pandas-free rest of .venv through a .pth file.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || make venv
site="$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
python3 -m venv bench/.venv-deep-river
inner="$(bench/.venv-deep-river/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$site" > "$inner/ae-worker-venv.pth"
bench/.venv-deep-river/bin/pip install -q --no-deps deep-river==0.3.4 river==0.22.0 pandas sortedcontainers torchviz
echo "ready: bench/.venv-deep-river (deep-river 0.3.4, river 0.22.0, torch from .venv)"
