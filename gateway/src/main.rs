use clap::Parser;
use gateway::config::{Cli, Command};

/// mimalloc instead of the system allocator: under load the gateway and processor allocate and
/// free many small buffers per request (body, readings, metric names), where glibc's malloc
/// showed as a fifth of the CPU profile (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(config) => {
            shared::telemetry::init_tracing(config.log.log_format, std::io::stdout);
            let cancel = tokio_util::sync::CancellationToken::new();
            shared::shutdown::cancel_on_signal(cancel.clone());
            let app = gateway::Application::build(config, cancel).await?;
            app.run_until_stopped().await
        }
    }
}
