#!/usr/bin/env bash
# The main job: set up, generate the demo data (once, cached), train the tri-modal
# classifier, print its validation accuracy.   bash scripts/demo.sh [extra mmctx fit args]
cd "$(dirname "$0")/.."
source scripts/setup.sh
set -eo pipefail
mmctx fit --config configs/demo.yaml "$@"
