"""What a flush runs to move staged rows into their table: spend charging within budgets.

The log writer (adserve/events/writer.py) copies a batch into a per-connection TEMP staging table
(`stage_table`), takes the locks of `LOCK_SQL` and runs `INSERT_SQL` in the same transaction, so
the rules below hold for every batch, retried or replayed, whichever process writes it.

Spend is charged in the transaction that inserts the rows, for the rows actually inserted
(``RETURNING``), one UPDATE per campaign per batch: ``spend_total`` grows by their cost, and
``spend_today`` by the cost of the rows on the batch's latest local day of the campaign (its
``timezone``). A later local day than the stored ``spend_day`` restarts ``spend_today``; rows of an
earlier day (a late replay) count only toward ``spend_total``, so a replay cannot reset today.

Budgets are never exceeded: the transaction first locks the campaigns it may charge (id order),
then bills each new priced row only while billed spend stays within the total and daily budget;
a row that does not fit is stored as delivered but not billed (``cost`` 0, its price in
``unbilled``). Under any number of writers and processes, billed spend ≤ budget, exactly.
Reservations: a decision row's ``reserved`` (its expected cost) is added to its campaign's
``budget_reservations`` bucket of the serving minute in the transaction that stores the decision,
and taken back out when its impression (CPM) or valid click (CPC) is stored, billed or not.
Eligibility counts unexpired buckets as committed spend (adserve/serving/budget.py).

Clicks: only one valid click per decision is allowed (partial unique index). A valid click that
loses to an existing valid click of the same decision is kept as invalid, reason 'duplicate',
cost 0. Invalid clicks never charge and are stored with cost 0 and unbilled 0.

Erasure (adserve/events/erasure.py): every statement checks the user's tombstone
(``users.erased_at``), so a row from before its user's erasure is stored without the user
(decisions, impressions, clicks, conversions) or not at all (behaviour events).
"""

from __future__ import annotations

from adserve.db.rows import WRITABLE_TABLES, columns

__all__ = ["ERASABLE_TABLES", "INSERT_SQL", "LOCK_SQL", "RETURNS_COUNT", "stage_table"]


def stage_table(table: str) -> str:
    """The per-connection TEMP table a batch of `table` rows is copied into before it is stored."""
    return f"_stage_{table}"


def _quoted(names: list[str] | tuple[str, ...]) -> str:
    return ", ".join(f'"{name}"' for name in names)


# Locks the campaigns a batch may charge, in id order (no deadlock between two flushes), so the
# billing verdict below reads spend that no other transaction can move until this one commits.
# Unpriced impressions lock too: the tables' keys hold ts (partitioning), so a second impression of
# a decision is kept out by NOT EXISTS, which sees a concurrent flush's row only once that flush,
# holding the same campaign's lock, has committed. Valid clicks take a transaction advisory lock
# per decision for the same reason: without it two nodes flushing a CPM campaign's click of one
# decision at the same instant both stored it valid. Per decision rather than the campaign's row,
# so an unpriced click need not wait for the campaign's other writers; in the two-key form, apart
# from the single-key locks of the job leader, learner and write barrier; in key order, so no two
# flushes deadlock.
# NO KEY UPDATE: creating a creative (a foreign key's KEY SHARE lock) is not blocked.
CLICK_LOCK_CLASS = 0x636C6B  # "clk": the first key of the per-decision click locks
LOCK_SQL = {
    "impressions": "SELECT id FROM campaigns WHERE id IN "
    "(SELECT campaign_id FROM _stage_impressions) ORDER BY id FOR NO KEY UPDATE",
    "clicks": f"SELECT pg_advisory_xact_lock({CLICK_LOCK_CLASS}, key) FROM "
    "(SELECT DISTINCT hashtext(decision_id::text) AS key FROM _stage_clicks WHERE valid ORDER BY 1) AS keys; "
    "SELECT id FROM campaigns WHERE id IN "
    "(SELECT campaign_id FROM _stage_clicks WHERE valid AND cost > 0) ORDER BY id FOR NO KEY UPDATE",
}

# `candidates` (key, campaign_id, ts, cost): the rows this statement will store that carry a price.
# Each is billed when, in arrival order within its campaign, the batch's billed rows so far still
# fit the total budget and its local day's daily budget; otherwise it is stored unbilled. A row of
# a local day before the campaign's `spend_day` (a replay across midnight) is billed only when the
# campaign has no daily budget: that day's spend is no longer kept. Rows ahead of an unbilled one
# count toward the running sums either way, which can only under-bill, never over-bill.
_VERDICT_CTES = """
priced AS (
    SELECT k.key, k.campaign_id, k.ts, k.cost, (k.ts AT TIME ZONE c.timezone)::date AS day,
           c.spend_total, c.spend_today, c.spend_day, c.total_budget, c.daily_budget
    FROM candidates k JOIN campaigns c ON c.id = k.campaign_id
),
verdict AS (
    SELECT key, coalesce(
        (total_budget IS NULL
         OR spend_total + sum(cost) OVER (PARTITION BY campaign_id ORDER BY ts, key) <= total_budget)
        AND (daily_budget IS NULL
         OR CASE WHEN spend_day IS NULL OR day > spend_day THEN 0
                 WHEN day = spend_day THEN spend_today END
            + sum(cost) OVER (PARTITION BY campaign_id, day ORDER BY ts, key) <= daily_budget),
        false) AS billed
    FROM priced
)"""

# The billed and unbilled amounts of a staged row `s` joined to its verdict `v`: a priced row
# without a verdict (its campaign is gone) is not billed.
_BILLED = {
    "cost": "CASE WHEN s.cost > 0 AND NOT coalesce(v.billed, false) THEN 0 ELSE s.cost END",
    "unbilled": "CASE WHEN s.cost > 0 AND NOT coalesce(v.billed, false) THEN s.cost ELSE 0 END",
}

# `inserted` (decision_id, campaign_id, ts, cost, unbilled): what this statement stored.
_SPEND_CTES = """
per_day AS (
    SELECT ins.campaign_id, (ins.ts AT TIME ZONE c.timezone)::date AS day, sum(ins.cost) AS cost
    FROM inserted ins JOIN campaigns c ON c.id = ins.campaign_id
    WHERE ins.cost > 0
    GROUP BY 1, 2
),
charge AS (
    SELECT DISTINCT ON (campaign_id) campaign_id, day, cost AS day_cost,
           sum(cost) OVER (PARTITION BY campaign_id) AS total
    FROM per_day
    ORDER BY campaign_id, day DESC
),
charged AS (
    UPDATE campaigns c
    SET spend_total = c.spend_total + ch.total,
        spend_today = CASE
            WHEN c.spend_day IS NULL OR ch.day > c.spend_day THEN ch.day_cost
            WHEN ch.day = c.spend_day THEN c.spend_today + ch.day_cost
            ELSE c.spend_today
        END,
        spend_day = GREATEST(c.spend_day, ch.day)
    FROM charge ch
    WHERE c.id = ch.campaign_id
    RETURNING 1
),
released AS (
    SELECT d.campaign_id, date_trunc('minute', d.ts) AS served_minute, sum(d.reserved) AS amount
    FROM inserted ins JOIN decisions d ON d.id = ins.decision_id
    WHERE ins.cost + ins.unbilled > 0 AND d.reserved > 0
    GROUP BY 1, 2
),
release AS (
    UPDATE budget_reservations r SET amount = greatest(r.amount - rel.amount, 0)
    FROM released rel
    WHERE r.campaign_id = rel.campaign_id AND r.served_minute = rel.served_minute
    RETURNING 1
)"""


# Erasure: a staged row `s` from before its user's erasure (``users.erased_at``, the tombstone that
# adserve/events/erasure.py commits for every key of the user) arrives without the user.
def _erased_before(time_column: str) -> str:
    return f"EXISTS (SELECT 1 FROM users u WHERE u.id = s.user_id AND u.erased_at >= s.{time_column})"


_UNLINKED = {"user_id": f"CASE WHEN {_erased_before('ts')} THEN NULL ELSE s.user_id END"}
# Behaviour events of an erased user are not stored at all (their time: when we received them).
_KEEP_EVENT = f"NOT {_erased_before('received_at')}"
ERASABLE_TABLES = frozenset({"user_events", "decisions", "impressions", "clicks", "conversions"})


def _insert_sql(table: str) -> str:
    """One statement moving the staged rows into `table`; its result is the inserted row count."""
    names = columns(table)
    cols = _quoted(names)
    stage = stage_table(table)
    unlinked = ", ".join(_UNLINKED.get(name, f's."{name}"') for name in names)
    if table == "decisions":
        # A decision reserves its expected cost in its campaign's bucket of the serving minute.
        return f"""
WITH inserted AS (
    INSERT INTO decisions ({cols}) SELECT {unlinked} FROM {stage} s
    ON CONFLICT DO NOTHING RETURNING campaign_id, ts, reserved
),
reserving AS (
    INSERT INTO budget_reservations (campaign_id, served_minute, amount)
    SELECT campaign_id, date_trunc('minute', ts), sum(reserved) FROM inserted
    WHERE reserved > 0 AND campaign_id IS NOT NULL
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (campaign_id, served_minute)
    DO UPDATE SET amount = budget_reservations.amount + EXCLUDED.amount
    RETURNING 1
)
SELECT count(*) FROM inserted"""
    if table == "impressions":
        billed = ", ".join({**_BILLED, **_UNLINKED}.get(name, f's."{name}"') for name in names)
        return f"""
WITH staged AS (
    SELECT s.*, row_number() OVER (PARTITION BY s.decision_id ORDER BY s.ts) AS nth FROM {stage} s
),
candidates AS (
    SELECT s.decision_id AS key, s.campaign_id, s.ts, s.cost FROM staged s
    WHERE s.nth = 1 AND s.cost > 0
      AND NOT EXISTS (SELECT 1 FROM impressions i WHERE i.decision_id = s.decision_id)
),{_VERDICT_CTES},
inserted AS (
    INSERT INTO impressions ({cols})
    SELECT {billed} FROM staged s LEFT JOIN verdict v ON v.key = s.decision_id WHERE s.nth = 1 AND NOT EXISTS (SELECT 1 FROM impressions i WHERE i.decision_id = s.decision_id)
    ON CONFLICT DO NOTHING RETURNING decision_id, campaign_id, ts, cost, unbilled
),{_SPEND_CTES}
SELECT count(*) FROM inserted"""
    if table == "clicks":
        # The first valid click of each decision in the batch is tried as valid; any that loses to
        # a stored valid click of the same decision, and every later valid one in the batch, is
        # stored as an invalid duplicate. ON CONFLICT (id, ts) keeps replays of either kind idempotent.
        billed = ", ".join({**_BILLED, **_UNLINKED}.get(name, f's."{name}"') for name in names)
        overrides = {
            **_UNLINKED,
            "valid": "false",
            "invalid_reason": "CASE WHEN s.valid THEN 'duplicate' ELSE s.invalid_reason END",
            "cost": "0",
            "unbilled": "0",
        }
        demoted = ", ".join(overrides.get(name, f's."{name}"') for name in names)
        return f"""
WITH staged AS (
    SELECT s.*, s.valid AND row_number() OVER (PARTITION BY s.decision_id, s.valid ORDER BY s.ts, s.id) = 1
           AND NOT EXISTS (SELECT 1 FROM clicks k WHERE k.decision_id = s.decision_id AND k.valid) AS first_valid
    FROM {stage} s
),
candidates AS (
    SELECT s.id AS key, s.campaign_id, s.ts, s.cost FROM staged s
    WHERE s.first_valid AND s.cost > 0
      AND NOT EXISTS (SELECT 1 FROM clicks k WHERE k.decision_id = s.decision_id AND k.valid)
      AND NOT EXISTS (SELECT 1 FROM clicks k WHERE k.id = s.id)
),{_VERDICT_CTES},
valid_inserted AS (
    INSERT INTO clicks ({cols})
    SELECT {billed} FROM staged s LEFT JOIN verdict v ON v.key = s.id WHERE s.first_valid
    ON CONFLICT DO NOTHING RETURNING id, decision_id, campaign_id, ts, cost, unbilled
),
invalid_inserted AS (
    INSERT INTO clicks ({cols}) SELECT {demoted} FROM staged s
    WHERE s.id NOT IN (SELECT id FROM valid_inserted)
    ON CONFLICT (id, ts) DO NOTHING RETURNING 1
),
inserted AS (SELECT decision_id, campaign_id, ts, cost, unbilled FROM valid_inserted),{_SPEND_CTES}
SELECT (SELECT count(*) FROM valid_inserted) + (SELECT count(*) FROM invalid_inserted)"""
    if table == "user_events":
        return (
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} s WHERE {_KEEP_EVENT} "
            "ON CONFLICT DO NOTHING"
        )
    if table in ERASABLE_TABLES:
        return f"INSERT INTO {table} ({cols}) SELECT {unlinked} FROM {stage} s ON CONFLICT DO NOTHING"
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} ON CONFLICT DO NOTHING"


INSERT_SQL = {table: _insert_sql(table) for table in WRITABLE_TABLES}
# The statements whose result is the inserted row count (the others report it in their status).
RETURNS_COUNT = {"decisions", "impressions", "clicks"}
