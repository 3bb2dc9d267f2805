use clap::Parser;
use processor::config::{Cli, Command, UserCommand};
use std::io::Read;

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
            let app = processor::Application::build(config, cancel).await?;
            app.run_until_stopped().await
        }
        Command::Migrate(args) => {
            shared::telemetry::init_tracing(args.log.log_format, std::io::stderr);
            processor::storage::migrate(&args.database).await?;
            Ok(())
        }
        Command::User(UserCommand::Create(args)) => {
            shared::telemetry::init_tracing(args.log.log_format, std::io::stderr);
            let mut password = String::new();
            std::io::stdin().read_to_string(&mut password)?;
            let password = password.trim_end_matches(['\r', '\n']).to_owned();
            let user = processor::users::create_from_cli(&args, password).await?;
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "{}",
                    serde_json::json!({ "id": user.id, "username": user.username, "role": user.role })
                );
            }
            Ok(())
        }
    }
}
