#!/usr/bin/env bash
# A failover demo using only the CLI: start three greeters, run a client in the
# background, crash one, bring it back, freeze another, and stop everything.
# Run from the repository root:  bash examples/failover.sh
set -euo pipefail
state=$(mktemp -d)
trap 'devcluster down --state-dir "$state" >/dev/null 2>&1 || true; rm -rf "$state"' EXIT

devcluster -f examples/Procfile up -d --state-dir "$state" --port 0
devcluster client --state-dir "$state" --service server --interval 0.2 --timeout 1 &
client=$!

sleep 2; echo "== weight server1 5";  devcluster weight server1 5 --state-dir "$state"
sleep 2; echo "== kill server2";      devcluster kill server2 --state-dir "$state"
sleep 2; echo "== start server2";     devcluster start server2 --state-dir "$state"
sleep 2; echo "== pause server3";     devcluster pause server3 --state-dir "$state"
sleep 3; echo "== resume server3";    devcluster resume server3 --state-dir "$state"
sleep 2
kill -INT "$client"; wait "$client" || true
devcluster ps --state-dir "$state"
