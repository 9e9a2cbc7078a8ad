#!/usr/bin/env bash
# Routed (not kept) requests over HTTP, before and after a change: `bench/routing_http.sh OLD`
# serves the tree OLD (a worktree of the earlier commit, e.g. `git worktree add /tmp/old
# aeb5836`) and this checkout side by side with the same venv. Issue 15: before (include_router), after
# (routes as declared), each `serve` on core 0, wrk on core 1, alternating, same run.
set -u
OLD_TREE=$(realpath "${1:?the old tree, a worktree of the commit to compare}")
NEW_TREE=$(realpath "$(dirname "$0")/..")
PY="$NEW_TREE/.venv/bin/python"
rm -f /tmp/rt-old.db* /tmp/rt-new.db*
common="API_KEYS=k-0123456789 AVEPOINT_BASE_URL=http://127.0.0.1:9 AVEPOINT_TOKEN_URL=http://127.0.0.1:9/t AVEPOINT_CLIENT_ID=x AVEPOINT_CLIENT_SECRET=y REFRESH_INTERVAL_SECONDS=0 CUSTOMER_IDS=c1 LOG_LEVEL=WARNING"
cd /tmp
env $common DATABASE_URL=sqlite:////tmp/rt-old.db PYTHONPATH="$OLD_TREE" taskset -c 0 "$PY" -m app serve --port 18801 > /tmp/rt-old.log 2>&1 &
OLD=$!
env $common DATABASE_URL=sqlite:////tmp/rt-new.db PYTHONPATH="$NEW_TREE" taskset -c 0 "$PY" -m app serve --port 18802 > /tmp/rt-new.log 2>&1 &
NEW=$!
for p in 18801 18802; do until curl -s -o /dev/null http://127.0.0.1:$p/healthz; do sleep 0.1; done; done
for path in /healthz /enums; do
  for p in 18801 18802; do curl -s -o /dev/null -w "$p $path %{http_code}\n" -H "X-API-Key: k-0123456789" http://127.0.0.1:$p$path; taskset -c 1 wrk -t1 -c16 -d2s -H "X-API-Key: k-0123456789" http://127.0.0.1:$p$path > /dev/null; done
  for round in 1 2 3; do
    for p in 18801 18802; do
      name=$([ $p = 18801 ] && echo before || echo after)
      taskset -c 1 wrk -t1 -c64 -d8s --latency -H "X-API-Key: k-0123456789" http://127.0.0.1:$p$path > /tmp/rt-$name.txt
      rps=$(awk '/Requests\/sec/{print $2}' /tmp/rt-$name.txt); p99=$(awk '/ 99%/{print $2}' /tmp/rt-$name.txt); p50=$(awk '/ 50%/{print $2}' /tmp/rt-$name.txt)
      echo "$path round $round $name req/s $rps p50 $p50 p99 $p99"
    done
  done
done
kill $OLD $NEW; wait
