-- TimescaleDB, only where the extension is installed on the server: plain PostgreSQL skips this
-- whole block and keeps `readings` an ordinary table with the same queries (date_bin works on
-- both). The chunk interval can be set per database before migrating:
--   ALTER DATABASE iot_hub SET hub.chunk_interval = '1 day';
DO $$
DECLARE
    chunk interval := coalesce(nullif(current_setting('hub.chunk_interval', true), ''), '1 day')::interval;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        PERFORM create_hypertable('readings', 'ts', chunk_time_interval => chunk, if_not_exists => true, migrate_data => true);
        EXECUTE 'ALTER TABLE readings SET (timescaledb.compress, timescaledb.compress_segmentby = ''series_id'', timescaledb.compress_orderby = ''ts'')';
        PERFORM add_compression_policy('readings', INTERVAL '7 days', if_not_exists => true);
        RAISE NOTICE 'readings is a TimescaleDB hypertable (chunk interval %)', chunk;
    ELSE
        RAISE NOTICE 'timescaledb is not available: readings stays a plain table';
    END IF;
END
$$;
