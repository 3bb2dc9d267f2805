//! End-to-end tests: the real binaries against the real PostgreSQL and NATS. One test binary
//! (linking is the slow part on small machines), a module per area.

#![allow(clippy::unwrap_used)]

mod compat;
mod docs;
mod ingest_http;
mod mqtt;
mod observability;
mod pipeline;
mod queries;
mod recovery;
mod replay;
mod rules;
mod security;
mod slow_clients;
