//! Replays the real UCI Occupancy data through a gateway over HTTP, in batches, at a chosen rate,
//! and prints what was accepted and rejected.

use clap::Parser;
use futures::StreamExt;
use hub_tests::replay::{self, RawReading};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    name = "replay",
    about = "Replay the UCI Occupancy files through a gateway"
)]
struct Args {
    /// Base URL of a gateway.
    #[arg(long, env = "GATEWAY_URL", default_value = "http://127.0.0.1:8081")]
    gateway_url: String,
    /// The device's API key (the room is one device).
    #[arg(long, env = "HUB_DEVICE_KEY", hide_env_values = true)]
    api_key: String,
    /// Folder with the three occupancy_*.csv files.
    #[arg(long, env = "REPLAY_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// UTC offset of the files' local timestamps (the office was in Belgium: CET in February).
    #[arg(long, default_value = "+01:00")]
    utc_offset: String,
    /// Readings per request.
    #[arg(long, default_value_t = 600)]
    batch_size: usize,
    /// Readings per second to aim for (open loop); 0 sends as fast as the gateway answers.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// No progress bar (for logs and tests).
    #[arg(long)]
    quiet: bool,
}

#[derive(Default, Debug)]
struct Outcome {
    accepted: u64,
    rejected: u64,
    reasons: BTreeMap<String, u64>,
    failed_batches: u64,
}

/// Groups rejection messages by their first words, so the summary stays short.
fn reason_key(msg: &str) -> String {
    msg.split_whitespace().take(4).collect::<Vec<_>>().join(" ")
}

async fn send(http: &reqwest::Client, args: &Args, id: String, batch: &[RawReading]) -> Outcome {
    let body = replay::body(batch);
    let mut out = Outcome::default();
    for attempt in 0..20 {
        let result = http
            .post(format!("{}/ingest", args.gateway_url))
            .bearer_auth(&args.api_key)
            .header("Idempotency-Key", &id)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let wait = match result {
            Ok(r) if r.status().is_success() || r.status() == 422 => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                out.accepted += v["accepted"].as_u64().unwrap_or(0);
                for rej in v["rejected"].as_array().into_iter().flatten() {
                    out.rejected += 1;
                    *out.reasons
                        .entry(reason_key(rej["error"].as_str().unwrap_or("?")))
                        .or_default() += 1;
                }
                return out;
            }
            Ok(r) if r.status() == 429 || r.status() == 503 => r
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs(1)),
            Ok(r) => {
                eprintln!(
                    "batch {id}: HTTP {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                );
                out.failed_batches += 1;
                return out;
            }
            Err(e) => {
                eprintln!("batch {id}: {e} (attempt {attempt})");
                Duration::from_millis(500)
            }
        };
        tokio::time::sleep(wait).await;
    }
    out.failed_batches += 1;
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = replay::read_all(&args.data_dir, &args.utc_offset)?;
    let total: usize = files.iter().map(|f| f.readings.len()).sum();
    let rows: usize = files.iter().map(|f| f.rows).sum();
    let numbers: usize = files
        .iter()
        .flat_map(|f| &f.readings)
        .filter(|r| r.valid_number)
        .count();
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total as u64)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} readings ({per_sec}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let batch_size = args.batch_size.max(1);
    let mut jobs = Vec::new();
    for f in &files {
        for (i, chunk) in f.readings.chunks(batch_size).enumerate() {
            jobs.push((format!("replay-{}-{batch_size}-{i}", f.name), chunk));
        }
    }
    let started = Instant::now();
    let mut sent = 0u64;
    let sends = futures::stream::iter(jobs.into_iter().map(|(id, chunk)| {
        let due = if args.rate > 0 {
            Some(started + Duration::from_secs_f64(sent as f64 / args.rate as f64))
        } else {
            None
        };
        sent += chunk.len() as u64;
        let (http, args, bar) = (&http, &args, &bar);
        async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            let o = send(http, args, id, chunk).await;
            bar.inc(chunk.len() as u64);
            o
        }
    }))
    .buffered(args.concurrency.max(1));
    let results: Vec<Outcome> = sends.collect().await;
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    let mut total_out = Outcome::default();
    for o in results {
        total_out.accepted += o.accepted;
        total_out.rejected += o.rejected;
        total_out.failed_batches += o.failed_batches;
        for (k, v) in o.reasons {
            *total_out.reasons.entry(k).or_default() += v;
        }
    }
    #[allow(clippy::print_stdout)]
    {
        println!(
            "Replayed {} files, {rows} rows, {total} readings ({numbers} numeric) to {}",
            files.len(),
            args.gateway_url
        );
        println!("  accepted  {}", total_out.accepted);
        println!("  rejected  {}", total_out.rejected);
        for (reason, n) in &total_out.reasons {
            println!("    {n:>7}  {reason}…");
        }
        println!("  failed batches {}", total_out.failed_batches);
        println!(
            "  {secs:.2} s, {:.0} readings/s",
            total as f64 / secs.max(1e-9)
        );
        println!(
            "{}",
            serde_json::json!({
                "files": files.len(), "rows": rows, "readings": total, "accepted": total_out.accepted,
                "rejected": total_out.rejected, "failed_batches": total_out.failed_batches,
                "seconds": secs, "readings_per_sec": total as f64 / secs.max(1e-9),
            })
        );
    }
    if total_out.failed_batches > 0 {
        anyhow::bail!(
            "{} batches could not be delivered",
            total_out.failed_batches
        );
    }
    Ok(())
}
