#!/usr/bin/env bash
# Set up, then run examples/local on the local runtime: a Dataset, a base Model, a fine-tuned
# Model and a Server of it; wait until all are Ready, then query the server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
sub=.venv/bin/sub
$sub apply -f examples/local/ --wait --timeout 10m
$sub get
url=$($sub get server/tuned -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["status"]["url"])')
echo
echo "GET $url ->"
.venv/bin/python -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())' "$url"
echo
echo "The server keeps running under the local supervisor: 'sub local status', 'sub delete -f examples/local/', 'sub local stop'."
