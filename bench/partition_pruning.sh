#!/usr/bin/env bash
set -e
cd "$(dirname "$0")/.."
# EXPLAIN of the user-state query and the reward join on a fresh database with 60 days of daily
# partitions (BENCHMARKS.md, "Partition pruning"). Needs psql and the Postgres on 127.0.0.1:5432.
TMP_PLAN=$(mktemp)
DB=adserve_explain_$$
psql -h 127.0.0.1 -U postgres -d postgres -qc "CREATE DATABASE $DB" >/dev/null
trap 'rm -f "$TMP_PLAN"; psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null' EXIT
URL=postgresql://postgres@127.0.0.1:5432/$DB
ADSERVE_DATABASE_URL=$URL ADSERVE_SECRET_KEY=explain-secret-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx .venv/bin/python -m adserve migrate >/dev/null 2>&1
# daily partitions for the last 60 days (the premake job makes them ahead; here: behind, to have some to skip)
for d in $(seq 1 60); do
  day=$(date -u -d "-$d day" +%Y-%m-%d); next=$(date -u -d "-$((d-1)) day" +%Y-%m-%d); tag=$(date -u -d "-$d day" +%Y%m%d)
  for t in user_events decisions impressions; do
    psql -h 127.0.0.1 -U postgres -d $DB -qc "CREATE TABLE IF NOT EXISTS ${t}_p${tag} PARTITION OF $t FOR VALUES FROM ('$day') TO ('$next')" 2>/dev/null || true
  done
done
echo "partitions of decisions: $(psql -h 127.0.0.1 -U postgres -d $DB -Atc "SELECT count(*) FROM pg_inherits WHERE inhparent = 'decisions'::regclass")"
echo "--- user state history query (serving/user_state.py HISTORY_SQL, history_days 30)"
psql -h 127.0.0.1 -U postgres -d $DB -c "EXPLAIN (COSTS OFF) SELECT event_type, ts, item_id, category, price, query FROM user_events WHERE user_id = 'u1' AND ts > now() - interval '30 days' ORDER BY ts DESC LIMIT 50" | head -8
echo "--- reward join (learning/rewards.py PENDING_SQL, window 1800 s, lookback 7 days)"
psql -h 127.0.0.1 -U postgres -d $DB -c "EXPLAIN (COSTS OFF) SELECT d.id FROM decisions d LEFT JOIN rewards r ON r.decision_id = d.id LEFT JOIN impressions i ON i.decision_id = d.id AND i.ts >= now() - make_interval(secs => 604800 + 3600) LEFT JOIN campaigns c ON c.id = d.campaign_id WHERE r.decision_id IS NULL AND d.chosen_creative_id IS NOT NULL AND d.ts >= now() - make_interval(secs => 604800) AND d.ts < now() - make_interval(secs => 1800) ORDER BY d.ts LIMIT 100000" > "$TMP_PLAN"
grep -c "on decisions_\|on impressions_" "$TMP_PLAN" | sed 's/^/partition scans in the reward join: /'
grep -o "on decisions_p[0-9]*\|on impressions_p[0-9]*\|on decisions_default\|on impressions_default" "$TMP_PLAN" | sort | uniq | head -30 | tr '\n' ' '; echo
