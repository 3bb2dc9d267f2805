//! Processor configuration: every setting is a flag and an environment variable with a default
//! that works on one machine (the README's configuration table).

use shared::config::{HttpArgs, LogArgs, NatsArgs};
use shared::keys::Secret;
use std::net::SocketAddr;

#[derive(Debug, clap::Parser)]
#[command(
    name = "processor",
    version,
    about = "IoT Live Metrics Hub processor: storage, rules, alerts and API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Consume readings, store them, evaluate rules and serve the API.
    Serve(Box<ServeConfig>),
    /// Create the database if it is missing, then apply every pending migration.
    Migrate(MigrateArgs),
    /// Manage API users.
    #[command(subcommand)]
    User(UserCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user; the password is read from standard input.
    Create(UserCreateArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// PostgreSQL (or TimescaleDB) connection URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/iot_hub"
    )]
    pub database_url: String,

    /// Connections in the pool: the writers, the rules engine and API requests share them.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
}

#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct UserCreateArgs {
    #[arg(long)]
    pub username: String,
    #[arg(long, value_enum)]
    pub role: crate::users::Role,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeConfig {
    /// Address of the API listener.
    #[arg(long, env = "PROCESSOR_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub nats: NatsArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// HMAC secret for API tokens (HS256), at least 32 bytes. Required: a default would be a
    /// secret everyone knows.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,

    /// Lifetime of an API token, in seconds.
    #[arg(long, env = "JWT_TTL_SECS", default_value_t = 3600)]
    pub jwt_ttl_secs: u64,

    /// Username of an admin to create at start when no user exists yet.
    #[arg(long, env = "HUB_ADMIN_USERNAME")]
    pub admin_username: Option<String>,

    /// Password of that first admin.
    #[arg(long, env = "HUB_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<Secret>,

    #[command(flatten)]
    pub consumer: ConsumerArgs,

    /// Sustained `POST /auth/login` attempts allowed per client IP and minute.
    #[arg(long, env = "PROCESSOR_LOGIN_RATE_PER_MIN", default_value_t = 5)]
    pub login_rate_per_min: u32,

    /// Login attempts a client may make in a burst above that rate.
    #[arg(long, env = "PROCESSOR_LOGIN_BURST", default_value_t = 5)]
    pub login_burst: u32,

    /// Header carrying the client IP when the processor runs behind a trusted proxy (for example
    /// `X-Forwarded-For`). Unset: the peer address is the client, and such headers are ignored,
    /// since anyone can send them.
    #[arg(long, env = "PROCESSOR_TRUSTED_IP_HEADER")]
    pub trusted_ip_header: Option<String>,
}

/// How the processor reads the stream.
#[derive(Debug, Clone, clap::Args)]
pub struct ConsumerArgs {
    /// Most messages written in one database statement.
    #[arg(long, env = "PROCESSOR_FETCH_BATCH", default_value_t = 500)]
    pub fetch_batch: usize,

    /// Milliseconds a writer waits after the first message of a batch for more to arrive, up to
    /// `fetch-batch`. A database write costs about the same for 400 rows as for 10 000 (the
    /// commit dominates), so under steady load a short wait makes each write carry much more;
    /// it adds at most this much to the ingest latency. 0 writes whatever is ready at once.
    #[arg(long, env = "PROCESSOR_FETCH_LINGER_MS", default_value_t = 20)]
    pub fetch_linger_ms: u64,

    /// Writer tasks in this process, each with its own pull subscription on the shared consumer.
    #[arg(long, env = "PROCESSOR_WRITERS", default_value_t = 2)]
    pub writers: usize,

    /// Messages delivered but not yet acknowledged, across every processor copy.
    #[arg(long, env = "PROCESSOR_MAX_ACK_PENDING", default_value_t = 20_000)]
    pub max_ack_pending: i64,

    /// Seconds before an unacknowledged message is redelivered; longer than the slowest write.
    #[arg(long, env = "PROCESSOR_ACK_WAIT_SECS", default_value_t = 60)]
    pub ack_wait_secs: u64,

    /// Fault injection for the crash-recovery test only: after the first batch is committed,
    /// hang before acknowledging it, so the test can SIGKILL the process at exactly that point.
    #[arg(
        long,
        env = "PROCESSOR_FAULT_PAUSE_BEFORE_ACK",
        hide = true,
        default_value_t = false
    )]
    pub fault_pause_before_ack: bool,
}
