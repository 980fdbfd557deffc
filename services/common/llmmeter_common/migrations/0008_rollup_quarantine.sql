-- Queued rows the rollup worker could not add to the rollups (a sum would overflow, a value the
-- rollup SQL refuses): moved here one by one, with why, so the queue keeps draining. Both flavours
-- (usage_rollup_pending exists in both). An operator can inspect them, fix and re-queue, or drop.
CREATE TABLE usage_rollup_quarantine (
    LIKE usage_rollup_pending INCLUDING DEFAULTS,
    quarantined_at timestamptz NOT NULL DEFAULT now(),
    reason         text        NOT NULL
);
