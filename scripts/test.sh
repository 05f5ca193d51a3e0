#!/usr/bin/env bash
# Set up and run the test suite.   bash scripts/test.sh [extra pytest args, e.g. -m slow]
cd "$(dirname "$0")/.."
source scripts/setup.sh
set -eo pipefail
ruff check mmctx encoders pipelines tests benchmarks
python -m pytest "$@"
