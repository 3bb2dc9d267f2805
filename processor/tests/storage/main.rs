//! Storage tests of the processor against a real PostgreSQL: each test gets its own database,
//! migrated, and drops it after. One test binary (linking is the slow part on small machines),
//! a module per area.

#![allow(clippy::unwrap_used)]

mod query_plans;
mod writes;

use processor::config::DatabaseArgs;
use sqlx::{Connection, PgPool};

/// The PostgreSQL server the test databases are created on (trust auth, as on our machines).
pub fn pg_server_url() -> String {
    std::env::var("HUB_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A freshly migrated database with a unique name, dropped when this is dropped.
pub struct TestDb {
    pub name: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn create() -> TestDb {
        let server = pg_server_url();
        if let Err(e) = sqlx::PgConnection::connect(&format!("{server}/postgres")).await {
            panic!("PostgreSQL is not reachable at {server} ({e}). Start it: compose/services up");
        }
        let name = format!(
            "hub_storage_test_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let args = DatabaseArgs {
            database_url: format!("{server}/{name}"),
            database_max_connections: 4,
        };
        processor::storage::migrate(&args).await.unwrap();
        let pool = processor::storage::pool(&args).unwrap();
        TestDb { name, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (name, server) = (self.name.clone(), pg_server_url());
        // Drop cannot be async; clean up on a thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::PgConnection::connect(&format!("{server}/postgres")).await
                {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                    )))
                    .execute(&mut c)
                    .await;
                }
            });
        })
        .join();
    }
}
