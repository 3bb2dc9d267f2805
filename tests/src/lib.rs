//! Test and tooling support: start a real hub (the real `gateway` and `processor` binaries) on
//! free ports with a unique database and NATS namespace, talk to it, and clean up after.
//!
//! - [`hub`]: [`hub::TestHub`], one isolated hub per test.
//! - [`load`]: the open-loop HTTP load generator of the benchmark (`src/bin/bench.rs`).
//! - [`process`]: a child process whose JSON log lines are captured to a file and searched.
//! - [`replay`]: the UCI Occupancy files as readings (used by the `replay` binary and tests).
//!
//! PostgreSQL and NATS must be running (`compose/services up` starts them); a missing one is a
//! loud failure naming what to start, never a skip.

// Test support: a failed lock or spawn here should fail the test loudly, which is what unwrap does.
#![allow(clippy::unwrap_used)]

pub mod hub;
pub mod load;
pub mod process;
pub mod replay;

use std::path::PathBuf;
use std::sync::OnceLock;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Paths of the hub's binaries, built once per test process. Cargo only gives a package's own
/// binaries to its tests, so this package builds the others itself (a no-op when up to date).
pub struct Binaries {
    pub gateway: PathBuf,
    pub processor: PathBuf,
}

pub fn binaries() -> &'static Binaries {
    static BINS: OnceLock<Binaries> = OnceLock::new();
    BINS.get_or_init(|| {
        let release = std::env::var("HUB_TEST_RELEASE").is_ok_and(|v| v == "1");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(workspace_root())
            .args(["build", "-q", "-p", "gateway", "-p", "processor"]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("cannot run cargo to build the hub binaries");
        assert!(
            status.success(),
            "building the gateway and processor failed"
        );
        let dir = target_dir().join(if release { "release" } else { "debug" });
        Binaries {
            gateway: dir.join("gateway"),
            processor: dir.join("processor"),
        }
    })
}

/// A short random suffix for names that must not collide between parallel tests.
pub fn unique_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}
