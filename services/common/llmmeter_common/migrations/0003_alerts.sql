-- The alerts service's own state: rules, one row per (rule, group) alert, the
-- history, a transactional outbox of notifications, and silences.

CREATE TABLE alert_rules (
    id bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE,
    spec jsonb NOT NULL,                      -- the llmmeter.v1.Rule in proto JSON (secrets included)
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE alert_states (
    rule_id bigint NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    grp text NOT NULL,
    state text NOT NULL,                      -- ok | pending | firing | resolved
    severity text,                            -- warning | critical
    value double precision,
    state_since timestamptz NOT NULL,
    pending_since timestamptz,
    firing_since timestamptz,
    last_true_at timestamptz,                 -- last evaluation whose condition held (keep_firing_for)
    evaluated_at timestamptz,
    notified_at timestamptz,
    notified_severity text,                   -- severity of the last firing notification; NULL: not notified
    budget_period text,                       -- budget rules: the period the fired percents belong to
    budget_fired double precision[] NOT NULL DEFAULT '{}',
    PRIMARY KEY (rule_id, grp)
);

CREATE TABLE alert_events (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL,
    kind text NOT NULL,                       -- state_change | notification | delivery | silenced
    rule_id bigint REFERENCES alert_rules (id) ON DELETE CASCADE,
    rule_name text NOT NULL,
    grp text NOT NULL,
    from_state text,
    to_state text,
    severity text,
    value double precision,
    channel text,
    attempt integer,
    success boolean,
    message text NOT NULL DEFAULT ''
);
CREATE INDEX alert_events_rule_idx ON alert_events (rule_name, id);

CREATE TABLE alert_outbox (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL,
    rule_id bigint REFERENCES alert_rules (id) ON DELETE CASCADE,
    rule_name text NOT NULL,
    grp text NOT NULL,
    channel jsonb NOT NULL,                   -- the llmmeter.v1.NotificationChannel
    payload jsonb NOT NULL,                   -- the webhook body
    status text NOT NULL DEFAULT 'pending',   -- pending | delivered | failed
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL
);
CREATE INDEX alert_outbox_pending_idx ON alert_outbox (next_attempt_at) WHERE status = 'pending';

CREATE TABLE alert_silences (
    id bigserial PRIMARY KEY,
    matchers jsonb NOT NULL,
    starts_at timestamptz NOT NULL,
    ends_at timestamptz NOT NULL,
    comment text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now()
);
