-- Alerts: one row per ACTIVE→RESOLVED episode of a rule. Times named after readings
-- (`triggered_at`, `last_seen`, and `resolved_at` when a reading resolved it) are event times;
-- `created_at`/`updated_at` are wall-clock times of the database.
CREATE TABLE alerts (
    id           uuid PRIMARY KEY,
    -- No foreign key: an alert's history outlives its rule, so the rule's definition at the
    -- time it opened is copied below.
    rule_id      uuid NOT NULL,
    device_id    uuid NOT NULL,
    metric       text NOT NULL,
    rule_type    text NOT NULL CHECK (rule_type IN ('MAX', 'MIN', 'RANGE')),
    severity     text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    min          double precision,
    max          double precision,
    -- The bound the triggering value crossed (for RANGE, min or max).
    threshold    double precision NOT NULL,
    value        double precision NOT NULL,
    triggered_at timestamptz NOT NULL,
    last_value   double precision NOT NULL,
    last_seen    timestamptz NOT NULL,
    status       text NOT NULL CHECK (status IN ('ACTIVE', 'RESOLVED')),
    resolved_at  timestamptz,
    -- Why it was resolved: an in-bounds reading, an admin, or its rule disabled or deleted.
    resolution   text CHECK (resolution IN ('reading', 'manual', 'rule_disabled', 'rule_deleted')),
    resolved_by  uuid,
    note         text CHECK (length(note) <= 1000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alerts_lifecycle_check CHECK (
        (status = 'ACTIVE' AND resolved_at IS NULL AND resolution IS NULL)
        OR (status = 'RESOLVED' AND resolved_at IS NOT NULL AND resolution IS NOT NULL)
    )
);

-- At most one ACTIVE alert per rule, whatever number of processors evaluate it. The engine
-- maps a violation of this index, by name, to a conflict and re-reads the state.
CREATE UNIQUE INDEX alerts_one_active_per_rule ON alerts (rule_id) WHERE status = 'ACTIVE';
-- `GET /alerts` pages by (triggered_at, id); the filtered forms by device or rule.
CREATE INDEX alerts_triggered_at_idx ON alerts (triggered_at, id);
CREATE INDEX alerts_device_triggered_at_idx ON alerts (device_id, triggered_at);
CREATE INDEX alerts_rule_triggered_at_idx ON alerts (rule_id, triggered_at);

-- A rule that disappears takes its open alert with it, however it disappears: the API's delete
-- resolves the alert itself first (to log and count it), so this catches the cascade from a
-- deleted device, and any hand-made DELETE.
CREATE FUNCTION alerts_resolve_for_deleted_rule() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE alerts
       SET status = 'RESOLVED', resolved_at = now(), resolution = 'rule_deleted', updated_at = now()
     WHERE rule_id = OLD.id AND status = 'ACTIVE';
    RETURN OLD;
END
$$;

CREATE TRIGGER rules_resolve_alert_on_delete
    AFTER DELETE ON rules
    FOR EACH ROW EXECUTE FUNCTION alerts_resolve_for_deleted_rule();
