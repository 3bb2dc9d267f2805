//! The processor: consumes readings from JetStream, stores them, evaluates rules into alerts and
//! serves the management and query API. Any number of copies share one durable consumer.
//!
//! - [`config`]: flags and environment.
//! - [`consumer`]: the pull consumer and the batched write path (ack only after commit).
//! - [`storage`]: every SQL statement, migrations.
//! - [`devices`]: device lifecycle and the KV mirror of device keys.
//! - [`rules`]: rule definitions, the pure `evaluate`, the per-copy rule cache, rule management.
//! - [`alerts`]: the rules engine run after each committed batch, and the alert lifecycle.
//! - [`users`], [`auth`]: API users, argon2id, JWT, role extractors.
//! - [`api`]: routers and thin handlers.
//! - [`observability`]: metric families.
//! - [`error`]: the one error type and JSON error shape.

pub mod alerts;
pub mod api;
pub mod auth;
pub mod config;
pub mod consumer;
pub mod devices;
pub mod error;
pub mod observability;
pub mod rules;
pub mod storage;
pub mod users;

use anyhow::Context as _;
use async_nats::jetstream::consumer::PullConsumer;
use config::ServeConfig;
use observability::Metrics;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Cheap to clone: a pool, a client and `Arc`s.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub nats: async_nats::Client,
    pub consumer: PullConsumer,
    pub metrics: Metrics,
    pub tokens: auth::Tokens,
    pub devices: devices::Devices,
    pub rules: rules::Rules,
}

pub struct Application {
    http: TcpListener,
    http_addr: SocketAddr,
    state: AppState,
    config: ServeConfig,
    cancel: CancellationToken,
    rule_announcements: async_nats::Subscriber,
    /// The telemetry stream, trimmed of what the consumer acknowledged.
    stream: async_nats::jetstream::stream::Stream,
}

impl Application {
    /// Checks the configuration, migrates, connects, creates the stream, key bucket and consumer,
    /// reconciles the key bucket with the database, and binds the API listener (port 0 allowed).
    pub async fn build(
        config: Box<ServeConfig>,
        cancel: CancellationToken,
    ) -> anyhow::Result<Self> {
        let config = *config;
        let tokens = auth::Tokens::new(config.jwt_secret.as_ref(), config.jwt_ttl_secs)?;
        let names = config.nats.names()?;
        storage::migrate(&config.database).await?;
        let db = storage::pool(&config.database)?;
        users::bootstrap_admin(
            &db,
            config.admin_username.as_deref(),
            config.admin_password.as_ref().map(|p| p.expose()),
        )
        .await?;

        let nats = async_nats::ConnectOptions::new()
            .name(format!("processor/{}", names.namespace()))
            .retry_on_initial_connect()
            .connect(&config.nats.nats_url)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", config.nats.nats_url))?;
        let js = async_nats::jetstream::new(nats.clone());
        shared::backbone::ensure_stream(&js, &names, config.nats.stream_limits()).await?;
        let bucket = shared::backbone::ensure_key_bucket(&js, &names).await?;
        devices::reconcile(&db, &bucket)
            .await
            .context("cannot reconcile the key bucket")?;
        let consumer = consumer::ensure_consumer(&js, &names, &config.consumer).await?;
        let stream = js
            .get_stream(names.stream())
            .await
            .with_context(|| format!("cannot open stream {}", names.stream()))?;
        // Subscribe before the first load, so that no change committed after the load is missed.
        let rule_announcements = nats
            .subscribe(names.rules_changed_subject())
            .await
            .context("cannot subscribe to rule announcements")?;
        let rule_cache = rules::RuleCache::default();
        rule_cache
            .reload(&db, rules::cache::Trigger::Start)
            .await
            .context("cannot load the rules")?;
        let metrics = Metrics::new();

        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot bind the API listener on {}", config.http_addr))?;
        let http_addr = http.local_addr()?;
        let state = AppState {
            devices: devices::Devices {
                db: db.clone(),
                bucket,
            },
            rules: rules::Rules {
                db: db.clone(),
                cache: rule_cache,
                nats: nats.clone(),
                subject: names.rules_changed_subject(),
                metrics: metrics.clone(),
            },
            db,
            nats,
            consumer,
            metrics,
            tokens,
        };
        Ok(Self {
            http,
            http_addr,
            state,
            config,
            cancel,
            rule_announcements,
            stream,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Runs until cancelled. Shutdown order: the writers stop pulling and finish (store and
    /// acknowledge) their batch in progress, then the API stops, then NATS is flushed.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            http,
            http_addr,
            state,
            config,
            cancel,
            rule_announcements,
            stream,
        } = self;
        let writer = consumer::Writer {
            db: state.db.clone(),
            metrics: state.metrics.clone(),
            alerts: alerts::Engine {
                db: state.db.clone(),
                metrics: state.metrics.clone(),
                rules: state.rules.cache.clone(),
            },
            series: Default::default(),
            touched: Default::default(),
            fetch_batch: config.consumer.fetch_batch.max(1),
            fetch_linger: std::time::Duration::from_millis(config.consumer.fetch_linger_ms),
            fault_pause_before_ack: config.consumer.fault_pause_before_ack,
        };
        let mut writers = Vec::new();
        for _ in 0..config.consumer.writers.max(1) {
            writers.push(tokio::spawn(
                writer.clone().run(state.consumer.clone(), cancel.clone()),
            ));
        }
        let background = vec![
            tokio::spawn(consumer::poll_and_trim(
                state.consumer.clone(),
                stream.clone(),
                state.metrics.clone(),
                cancel.clone(),
            )),
            tokio::spawn(reconcile_periodically(
                state.devices.clone(),
                cancel.clone(),
            )),
            tokio::spawn(rules::cache::watch(
                state.rules.cache.clone(),
                state.db.clone(),
                rule_announcements,
                cancel.clone(),
            )),
        ];
        tracing::info!(
            module = "startup",
            operation = "listen",
            http_addr = %http_addr,
            writers = writers.len(),
            "Processor listening."
        );
        let router = api::router(state.clone(), &config)?;
        let stop_api = {
            let cancel = cancel.clone();
            async move {
                cancel.cancelled().await;
                for w in writers {
                    let _ = w.await;
                }
            }
        };
        shared::http::serve(http, router, stop_api, config.http.serve_options()).await;
        cancel.cancel();
        for task in background {
            let _ = task.await;
        }
        let _ = state.nats.flush().await;
        state.db.close().await;
        tracing::info!(
            module = "startup",
            operation = "shutdown",
            "Processor stopped."
        );
        Ok(())
    }
}

async fn reconcile_periodically(devices: devices::Devices, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if let Err(e) = devices::reconcile(&devices.db, &devices.bucket).await {
            tracing::warn!(module = "devices", operation = "reconcile", error = %e, "Key bucket reconciliation failed; retrying later.");
        }
    }
}
