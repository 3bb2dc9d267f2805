//! Every SQL statement of the processor lives under this module. Functions take an executor so
//! the caller chooses pool or transaction. Queries are runtime-checked (`sqlx::query_as`) and
//! covered by the end-to-end tests: compile-time macros would need a live database or a
//! committed `.sqlx/` cache in every build, which the Docker build and fresh machines lack.

pub mod alerts;
pub mod devices;
pub mod readings;
pub mod rules;
pub mod users;

use crate::config::DatabaseArgs;
use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use std::str::FromStr;
use std::time::Duration;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

pub fn options(args: &DatabaseArgs) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(&args.database_url)
        .context("DATABASE_URL is not a valid PostgreSQL URL")?
        .application_name("iot-hub-processor")
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// A pool that connects lazily, so the process starts (and reports not-ready) while the
/// database is down, and recovers by itself when it returns.
pub fn pool(args: &DatabaseArgs) -> anyhow::Result<PgPool> {
    Ok(PgPoolOptions::new()
        .max_connections(args.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options(args)?))
}

/// Creates the database if it is missing, then applies every pending migration.
pub async fn migrate(args: &DatabaseArgs) -> anyhow::Result<()> {
    create_database_if_missing(args).await?;
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options(args)?)
        .await
        .with_context(|| format!("cannot connect to {}", redact_url(&args.database_url)))?;
    MIGRATOR.run(&pool).await.context("migration failed")?;
    tracing::info!(
        module = "storage",
        operation = "migrate",
        status = "ok",
        "Migrations applied."
    );
    pool.close().await;
    Ok(())
}

async fn create_database_if_missing(args: &DatabaseArgs) -> anyhow::Result<()> {
    use sqlx::Connection;
    let target = options(args)?;
    let Some(name) = target.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = sqlx::PgConnection::connect_with(&target.clone().database("postgres"))
        .await
        .with_context(|| {
            format!(
                "cannot connect to the server of {}",
                redact_url(&args.database_url)
            )
        })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut admin)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        let sql = format!("CREATE DATABASE {quoted}");
        match sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
        {
            Ok(_) => {
                tracing::info!(module = "storage", operation = "create_database", database = %name, "Database created.")
            }
            // Another copy created it at the same moment.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e).context("cannot create the database"),
        }
    }
    admin.close().await?;
    Ok(())
}

/// The URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("redacted"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Whether `e` is a unique violation of the named constraint.
pub fn is_unique_violation(e: &sqlx::Error, constraint: &str) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505") && d.constraint() == Some(constraint))
}
