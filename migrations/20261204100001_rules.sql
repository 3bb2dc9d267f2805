-- Alert rules: one threshold condition on one device's one metric (DESIGN §6).
-- `last_evaluated_ts` is the rule's event-time watermark: the timestamp of the newest reading
-- the engine has evaluated for it. It lives here, not in a processor's memory, because several
-- processors evaluate parts of one device's stream in no guaranteed order; every alert
-- transition is made while holding this row's lock and only for readings newer than it.
CREATE TABLE rules (
    id                uuid PRIMARY KEY,
    -- A device's rules go with it; the trigger in the alerts migration resolves their open alerts.
    device_id         uuid NOT NULL,
    metric            text NOT NULL CHECK (length(metric) BETWEEN 1 AND 128),
    type              text NOT NULL CHECK (type IN ('MAX', 'MIN', 'RANGE')),
    min               double precision,
    max               double precision,
    severity          text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    enabled           boolean NOT NULL DEFAULT true,
    last_evaluated_ts timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rules_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices (id) ON DELETE CASCADE,
    -- The API validates first and explains; this keeps any other writer honest. A rule stores
    -- exactly the thresholds its type uses.
    CONSTRAINT rules_thresholds_check CHECK (
        (type = 'MAX' AND max IS NOT NULL AND min IS NULL)
        OR (type = 'MIN' AND min IS NOT NULL AND max IS NULL)
        OR (type = 'RANGE' AND min IS NOT NULL AND max IS NOT NULL AND min <= max)
    ),
    CONSTRAINT rules_finite_check CHECK (
        (min IS NULL OR min BETWEEN '-1.7976931348623157e308'::float8 AND '1.7976931348623157e308'::float8)
        AND (max IS NULL OR max BETWEEN '-1.7976931348623157e308'::float8 AND '1.7976931348623157e308'::float8)
    )
);
-- The cache load and the `device_id`/`metric` filters of `GET /rules`.
CREATE INDEX rules_device_metric_idx ON rules (device_id, metric);
-- Keyset pagination of `GET /rules`.
CREATE INDEX rules_created_at_idx ON rules (created_at, id);
