#!/usr/bin/env bash
# Create .venv at the project root and install beluga with everything it needs;
# install Vega from npm and point `dvc plots show` at an offline page template.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/pip install -q -e ".[dev]"
npm install --prefix web --no-audit --no-fund --legacy-peer-deps --loglevel=error
.venv/bin/python -m beluga.offline_page web/node_modules .dvc/plots/offline.html
DVC_NO_ANALYTICS=1 .venv/bin/dvc config --local plots.html_template plots/offline.html
