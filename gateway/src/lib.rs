//! The ingest gateway: stateless, any number of copies behind a load balancer.
//!
//! A device's batch is authenticated against an in-memory copy of the device-key bucket
//! ([`auth`]), validated and normalised ([`ingest`]), and published to JetStream; the device is
//! answered only after JetStream stored it. The gateway never touches the database.
//!
//! - [`config`]: flags and environment.
//! - [`auth`]: the device-key registry fed by the KV bucket.
//! - [`ingest`]: the one ingest path, its HTTP and MQTT faces, and the JetStream publisher
//!   ([`ingest::mqtt`] is the receive-only MQTT 3.1.1 endpoint; see `docs/mqtt.md`).
//! - [`routes`]: the HTTP router, health, readiness and metrics.
//! - [`openapi`]: the OpenAPI document of `POST /ingest`, at `GET /openapi.json`.
//! - [`observability`]: metric families.
//! - [`error`]: the one error type and JSON error shape.

pub mod auth;
pub mod config;
pub mod error;
pub mod ingest;
pub mod observability;
pub mod openapi;
pub mod routes;

use anyhow::Context as _;
use config::GatewayConfig;
use ingest::Ingestor;
use ingest::mqtt::{MqttServer, MqttSettings, MqttStatus};
use ingest::publish::Publisher;
use observability::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Cheap to clone: everything inside is shared.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<auth::KeyRegistry>,
    pub ingestor: Ingestor,
    pub metrics: Metrics,
    pub nats: async_nats::Client,
    /// Whether the MQTT listener accepts connections (part of `/readyz`).
    pub mqtt: Arc<MqttStatus>,
    pub auth_failures: Arc<auth::FailureLimiter>,
    /// See `GatewayConfig::trusted_ip_header`.
    pub trusted_ip_header: Option<Arc<str>>,
}

pub struct Application {
    http: TcpListener,
    http_addr: SocketAddr,
    mqtt: MqttServer,
    mqtt_addr: SocketAddr,
    state: AppState,
    config: GatewayConfig,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Application {
    /// Connects to NATS, makes sure the stream and key bucket exist, starts following the key
    /// bucket and binds the listeners (port 0 allowed; see [`http_addr`](Self::http_addr) and
    /// [`mqtt_addr`](Self::mqtt_addr)).
    pub async fn build(config: GatewayConfig, cancel: CancellationToken) -> anyhow::Result<Self> {
        let names = config.nats.names()?;
        let metrics = Metrics::new();
        let nats = async_nats::ConnectOptions::new()
            .name(format!("gateway/{}", names.namespace()))
            .retry_on_initial_connect()
            .connect(&config.nats.nats_url)
            .await
            .with_context(|| format!("cannot connect to NATS at {}", config.nats.nats_url))?;
        let publisher = Publisher::new(
            nats.clone(),
            Duration::from_millis(config.publish_timeout_ms),
            metrics.clone(),
        );
        let js = publisher.context().clone();
        shared::backbone::ensure_stream(&js, &names, config.nats.stream_limits()).await?;
        let store = shared::backbone::ensure_key_bucket(&js, &names).await?;

        let registry = Arc::new(auth::KeyRegistry::new(metrics.clone()));
        let tasks = vec![tokio::spawn(auth::follow_bucket(
            registry.clone(),
            store,
            cancel.clone(),
        ))];

        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("cannot bind the HTTP listener on {}", config.http_addr))?;
        let http_addr = http.local_addr()?;
        let mqtt_listener = TcpListener::bind(config.mqtt_addr)
            .await
            .with_context(|| format!("cannot bind the MQTT listener on {}", config.mqtt_addr))?;
        let ingestor = Ingestor {
            limits: config.limits.limits(),
            names,
            publisher,
            metrics: metrics.clone(),
        };
        let mqtt = MqttServer::new(
            mqtt_listener,
            ingestor.clone(),
            registry.clone(),
            metrics.clone(),
            MqttSettings::from_config(&config),
        );
        let mqtt_addr = mqtt.local_addr()?;
        let state = AppState {
            auth_failures: Arc::new(auth::FailureLimiter::new(
                config.auth_failures_per_min,
                config.auth_failure_burst,
            )),
            trusted_ip_header: config.trusted_ip_header.as_deref().map(Arc::from),
            registry,
            ingestor,
            metrics,
            nats,
            mqtt: mqtt.status(),
        };
        Ok(Self {
            http,
            http_addr,
            mqtt,
            mqtt_addr,
            state,
            config,
            cancel,
            tasks,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until the cancellation token fires, then stops accepting on both listeners, lets
    /// in-flight HTTP requests and MQTT publishes finish (each awaits its JetStream ack; MQTT
    /// connections then close) and flushes the NATS connection.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Self {
            http,
            http_addr,
            mqtt,
            mqtt_addr,
            state,
            config,
            cancel,
            tasks,
        } = self;
        let mqtt = tokio::spawn(mqtt.run(cancel.clone()));
        tracing::info!(
            module = "startup",
            operation = "listen",
            http_addr = %http_addr,
            mqtt_addr = %mqtt_addr,
            namespace = state.ingestor.names.namespace(),
            "Gateway listening."
        );
        let router = routes::router(state.clone(), &config);
        shared::http::serve(
            http,
            router,
            cancel.clone().cancelled_owned(),
            config.http.serve_options(),
        )
        .await;
        cancel.cancel();
        if let Err(e) = mqtt.await {
            tracing::error!(error = %e, "The MQTT endpoint task failed.");
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Err(e) = state.nats.flush().await {
            tracing::warn!(error = %e, "Could not flush NATS on shutdown.");
        }
        tracing::info!(
            module = "startup",
            operation = "shutdown",
            "Gateway stopped."
        );
        Ok(())
    }
}
