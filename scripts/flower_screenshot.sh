#!/usr/bin/env bash
# The README's first command on a fresh directory, seen in a real browser: starts
# `aiw up --sandbox` (embedded mode: SQLite and the embedded broker) in a temporary
# directory, runs the quick tour's jobs, and takes headless Chromium screenshots of
# Flower's workers and tasks pages, with the login `aiw up` generated.
#
#   bash scripts/flower_screenshot.sh [OUT_DIR]     # default: ./flower-screenshots
#
# Needs Chromium (Debian: apt-get update && apt-get install -y chromium). Not part of CI.
# FLOWER_PORT / METRICS_PORT pick the ports (default 5555 / 9808).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "${1:-flower-screenshots}" && cd "${1:-flower-screenshots}" && pwd)"
AIW="${AIW:-$ROOT/.venv/bin/aiw}"
CHROMIUM="${CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
FLOWER_PORT="${FLOWER_PORT:-5555}"
METRICS_PORT="${METRICS_PORT:-9808}"
[ -x "$AIW" ] || { echo "no $AIW: python3 -m venv .venv && .venv/bin/pip install -e ." >&2; exit 1; }
[ -n "$CHROMIUM" ] || { echo "no chromium: apt-get update && apt-get install -y chromium" >&2; exit 1; }

WORK="$(mktemp -d)"
cd "$WORK"
cp "$ROOT/README.md" .
# The user's environment, without ai-worker settings or provider keys: the sandbox mode.
unset DATABASE_URL CELERY_BROKER_URL REDIS_URL OPENAI_API_KEY OPENAI_BASE_URL \
  CODEGEN_TOKEN CODEGEN_ORG_ID CODEGEN_BASE_URL FLOWER_BASIC_AUTH AIW_DATA_DIR
"$AIW" up --sandbox --flower-port "$FLOWER_PORT" --metrics-port "$METRICS_PORT" > up.log 2>&1 &
UP_PID=$!
stop() {
  kill -INT "$UP_PID" 2>/dev/null || true
  wait "$UP_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop EXIT

for _ in $(seq 300); do
  grep -q "| ready;" up.log && break
  kill -0 "$UP_PID" 2>/dev/null || { cat up.log >&2; exit 1; }
  sleep 0.2
done
grep -q "| ready;" up.log || { tail -50 up.log >&2; exit 1; }
LOGIN="$(cat .aiw-data/flower-auth)"
FLOWER="http://127.0.0.1:$FLOWER_PORT"

# Flower turns task events on in the workers it sees, every few seconds: wait for that.
for _ in $(seq 60); do
  curl -fsS -u "$LOGIN" "$FLOWER/api/workers?refresh=1" | grep -q '"ai@' && break
  sleep 0.5
done
sleep 6

# The quick tour (README), in a second shell.
"$AIW" submit "Explain what a B-tree is" --wait 60
echo "Summarise: $(head -c 2000 README.md)" | "$AIW" submit --tag docs
"$AIW" agent run "Fix the flaky test in tests/test_io.py" --repo-id 42 --wait 60 > /dev/null
"$AIW" jobs
for _ in $(seq 60); do
  n=$(curl -fsS -u "$LOGIN" "$FLOWER/api/tasks?taskname=aiw.ai_request.run" \
      | python3 -c 'import json,sys; print(sum(t["state"] == "SUCCESS" for t in json.load(sys.stdin).values()))')
  [ "$n" -ge 2 ] && break
  sleep 0.5
done
echo "Flower lists $n succeeded aiw.ai_request.run tasks"

# Credentials in the URL: Chromium sends them for the page and then for its requests.
AUTH_URL="http://${LOGIN}@127.0.0.1:$FLOWER_PORT"
for page in workers tasks broker; do
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --window-size=1400,900 --virtual-time-budget=8000 \
    --screenshot="$OUT/$page.png" "$AUTH_URL/$page" 2>/dev/null
  echo "wrote $OUT/$page.png"
done
