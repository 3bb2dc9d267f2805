//! The batched write path (`storage::readings::store`): a binary COPY, and when a row of the
//! batch is already stored, the whole batch again with `ON CONFLICT DO NOTHING`. Either way the
//! table ends with exactly one row per `(series, ts)` and the answer counts only the new ones.

use crate::TestDb;
use chrono::{DateTime, Utc};
use processor::storage::readings::{self, Columns};
use uuid::Uuid;

fn cols(rows: &[(i32, i64, f64)]) -> Columns {
    Columns {
        series: rows.iter().map(|r| r.0).collect(),
        ts_us: rows
            .iter()
            .map(|r| 1_700_000_000_000_000 + r.1 * 1000)
            .collect(),
        value: rows.iter().map(|r| r.2).collect(),
    }
}

async fn stored(db: &TestDb) -> Vec<(i32, f64)> {
    sqlx::query_as("SELECT series_id, value FROM readings ORDER BY series_id, ts")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_new_batch_is_copied_and_a_redelivered_one_stores_only_what_is_new() {
    let db = TestDb::create().await;
    let keys = vec![
        (Uuid::new_v4(), "t".to_owned()),
        (Uuid::new_v4(), "h".to_owned()),
    ];
    let ids: Vec<i32> = readings::ensure_series(&db.pool, &keys)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, _, id)| id)
        .collect();
    let (a, b) = (ids[0], ids[1]);

    // New rows, with values a text format could round (the binary format carries the bits).
    let first = cols(&[
        (a, 0, 0.1 + 0.2),
        (a, 1, -0.0),
        (b, 0, 1e300),
        (b, 1, -1e-300),
    ]);
    assert_eq!(readings::store(&db.pool, &first).await.unwrap(), 4);
    let got = stored(&db).await;
    assert_eq!(got.len(), 4);
    assert_eq!(got[0].1.to_bits(), (0.1f64 + 0.2).to_bits());
    assert_eq!(got[1].1.to_bits(), (-0.0f64).to_bits());
    assert_eq!(got[2].1, 1e300);

    // The same batch again (a redelivery after commit) stores nothing and says so.
    assert_eq!(readings::store(&db.pool, &first).await.unwrap(), 0);
    // A batch half old, half new stores the new half; the first value of a row wins.
    let mixed = cols(&[(a, 0, 99.0), (a, 2, 3.0), (b, 1, 99.0), (b, 2, 4.0)]);
    assert_eq!(readings::store(&db.pool, &mixed).await.unwrap(), 2);
    // A batch that repeats a row within itself stores it once.
    let twice = cols(&[(a, 3, 5.0), (a, 3, 6.0)]);
    assert_eq!(readings::store(&db.pool, &twice).await.unwrap(), 1);

    let got = stored(&db).await;
    assert_eq!(got.len(), 7, "{got:?}");
    assert!(got.iter().all(|(_, v)| *v != 99.0 && *v != 6.0), "{got:?}");
}

#[tokio::test]
async fn timestamps_keep_their_millisecond_and_their_era() {
    let db = TestDb::create().await;
    let keys = vec![(Uuid::new_v4(), "t".to_owned())];
    let id = readings::ensure_series(&db.pool, &keys).await.unwrap()[0].2;
    // Before and after PostgreSQL's epoch (2000-01-01), and a millisecond that must survive.
    let times = [
        "1999-12-31T23:59:59.999Z",
        "2000-01-01T00:00:00.001Z",
        "2015-02-04T17:51:00Z",
        "2099-06-30T12:00:00.123Z",
    ];
    let ts: Vec<DateTime<Utc>> = times.iter().map(|t| t.parse().unwrap()).collect();
    let batch = Columns {
        series: vec![id; ts.len()],
        ts_us: ts.iter().map(|t| t.timestamp_micros()).collect(),
        value: vec![1.0; ts.len()],
    };
    assert_eq!(readings::store(&db.pool, &batch).await.unwrap(), 4);
    let back: Vec<DateTime<Utc>> = sqlx::query_scalar("SELECT ts FROM readings ORDER BY ts")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(back, ts);
    // The fallback statement (taken when a row is already stored) keeps them as well.
    let again = Columns {
        series: vec![id; 2],
        ts_us: vec![ts[0].timestamp_micros(), ts[0].timestamp_micros() + 1],
        value: vec![2.0; 2],
    };
    assert_eq!(readings::store(&db.pool, &again).await.unwrap(), 1);
    let added: DateTime<Utc> = sqlx::query_scalar("SELECT ts FROM readings WHERE value = 2")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(added.timestamp_micros(), ts[0].timestamp_micros() + 1);
}
