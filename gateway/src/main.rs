use clap::Parser;
use gateway::config::{Cli, Command};

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
