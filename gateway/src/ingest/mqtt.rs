//! The receive-only MQTT 3.1.1 face of the ingest path (docs/mqtt.md).
//!
//! One tokio task per TCP connection; packets are framed and written with the rumqtt project's
//! codec (`rumqttc::mqttbytes::v4`). Why this is not the embedded broker `rumqttd`: see
//! ARCHITECTURE.md, "MQTT endpoint". What a connection promises, and how:
//!
//! - **Bound to one device.** CONNECT carries username = device id and password = API key, checked
//!   against the same key registry as HTTP; the connection may then publish only on
//!   `devices/<its own id>/readings`. Anything else closes the connection without a PUBACK.
//! - **A PUBACK means stored.** A QoS 1 PUBACK is written only after [`Ingestor::ingest`]
//!   returned `Ok`, i.e. after JetStream acknowledged the batch, and PUBACKs leave in the order
//!   the PUBLISHes arrived (MQTT-4.6.0-2).
//! - **Backpressure, not buffering.** At most `mqtt_max_inflight` publishes per connection are
//!   outstanding; while they are, the socket is not read, so a slow backbone slows the device
//!   down (TCP flow control) instead of filling memory or dropping messages. When JetStream
//!   cannot take a QoS 1 message at all, the same message is retried with back-off until it is
//!   stored or the connection ends: the device simply gets no PUBACK until the backbone is back.
//! - **Redelivery is stored once.** The JetStream message id of a QoS 1 message is derived from
//!   the client id, the packet id and the payload (see [`redelivery_key`]), never from anything
//!   per connection, so a DUP redelivery after a reconnect (to this or another gateway) lands on
//!   the same id inside the stream's duplicate window.
//!
//! Refusals are one `Close` value or one `Event`, each of which logs one line and counts one
//! `mqtt_events_total{kind}` sample, so the log and the metric cannot drift.

use crate::auth::{AuthFailure, KeyRegistry};
use crate::config::GatewayConfig;
use crate::ingest::{Accepted, IngestError, Ingestor};
use crate::observability::Metrics;
use bytes::{Bytes, BytesMut};
use futures::FutureExt as _;
use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, StreamExt as _};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PubAck, Publish, SubAck,
    SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as CodecError, Protocol, QoS};
use shared::wire::Channel;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use uuid::Uuid;

/// Room for the fixed header, topic and packet id on top of the largest accepted payload. Our
/// one valid topic is 53 bytes; a longer one is refused anyway, so this only has to keep honest
/// packets with a full-size payload under the limit.
pub const PACKET_OVERHEAD_BYTES: usize = 4 * 1024;

/// The keep-alive grace the MQTT spec asks for: a client is dead after 1.5 × its keep-alive
/// without any packet.
const KEEP_ALIVE_FACTOR_PERCENT: u64 = 150;

/// First and largest pause between attempts to publish a QoS 1 message JetStream refused: short
/// enough that a stream leader election costs little, long enough that an outage does not turn
/// every blocked device into a busy loop against NATS.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A connection whose client stops reading its PUBACKs is closed after this long: otherwise a
/// blocked write would also stop keep-alive enforcement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// A revoked device's connection must close within about a second, so publishes still
/// waiting for JetStream get only this long to finish.
const REVOKED_DRAIN: Duration = Duration::from_millis(500);

/// Persistent-session markers of disconnected clients are forgotten after this long, and there
/// are never more than this many, so a client cycling client ids cannot grow memory without bound.
const SESSION_EXPIRY: Duration = Duration::from_secs(24 * 3600);
const MAX_IDLE_SESSIONS: usize = 100_000;

/// At most this many log lines per event kind per second for the whole endpoint; the rest are
/// counted (and the count is reported on the next line), never silently lost from the metrics.
const LOG_LINES_PER_KIND_PER_SEC: u32 = 10;

/// The endpoint's limits, derived from the gateway configuration.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    pub max_connections: usize,
    pub connect_timeout: Duration,
    pub max_inflight: usize,
    /// Largest MQTT packet (remaining length) read; larger ones close the connection before
    /// their body is read.
    pub max_packet_bytes: usize,
    /// How long a closing connection (shutdown, client gone, refusal) keeps finishing the
    /// publishes it already accepted from the socket.
    pub drain_timeout: Duration,
}

impl MqttSettings {
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self {
            max_connections: config.mqtt.mqtt_max_connections.max(1),
            connect_timeout: Duration::from_secs(config.mqtt.mqtt_connect_timeout_secs.max(1)),
            max_inflight: config.mqtt.mqtt_max_inflight.max(1),
            max_packet_bytes: config
                .limits
                .max_body_bytes
                .saturating_add(PACKET_OVERHEAD_BYTES),
            // One full publish timeout plus a little, so a publish already on the wire can
            // still be acknowledged.
            drain_timeout: Duration::from_millis(config.publish_timeout_ms.saturating_add(1000)),
        }
    }
}

/// Whether the listener is accepting connections; read by `/readyz`.
#[derive(Debug, Default)]
pub struct MqttStatus {
    accepting: AtomicBool,
}

impl MqttStatus {
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }
}

/// The device id a topic publishes for, if it is a readings topic at all.
///
/// Exactly `devices/<uuid>/readings`: no wildcards, no trailing level, no leading slash. The id
/// may be in any case (`Uuid` parsing is case-insensitive); the caller compares it with the
/// device the connection authenticated as.
pub fn topic_device(topic: &str) -> Option<Uuid> {
    let id = topic.strip_prefix("devices/")?.strip_suffix("/readings")?;
    // `Uuid::parse_str` also takes braced and URN forms; a topic level is the hyphenated form.
    if id.len() != 36 {
        return None;
    }
    Uuid::parse_str(id).ok()
}

/// The idempotency key (scoped to the device by [`Ingestor::ingest`]) of a QoS 1 message.
///
/// A redelivery carries the same client id, packet id and payload as the original, so it maps to
/// the same JetStream message id and is stored once, whichever connection or gateway it arrives
/// on. Nothing per connection may go in here, or a redelivery after a reconnect would be stored
/// again. The hash is FNV-1a 128, written out here because it must be identical on every gateway
/// build (std's `DefaultHasher` is not stable across releases); it need not resist attacks, since
/// a device can only ever collide with its own messages.
pub fn redelivery_key(client_id: &str, pkid: u16, payload: &[u8]) -> String {
    let mut h = Fnv128::new();
    h.write(&(client_id.len() as u64).to_be_bytes());
    h.write(client_id.as_bytes());
    h.write(&pkid.to_be_bytes());
    h.write(payload);
    format!("mqtt-{:032x}", h.0)
}

struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn new() -> Self {
        Self(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u128::from(*b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

/// Whether a QoS 1 message that JetStream reported as a duplicate must be published again under
/// a fresh id.
///
/// A first delivery (DUP = 0) that hits an existing id on our first attempt cannot be a
/// redelivery: it is a *new* message that happens to repeat an earlier one's packet id and
/// payload within the duplicate window (a device that reconnects for every reading restarts at
/// packet id 1). Dropping it would lose a reading that has no timestamp of its own. A DUP = 1
/// message, or any message whose earlier attempt here may have reached JetStream (a timeout),
/// really is the same message, and the duplicate answer means it is stored.
pub fn must_republish(dup: bool, first_attempt: bool, already_republished: bool) -> bool {
    !dup && first_attempt && !already_republished
}

/// Why a connection ended. Each variant is counted once under its `kind` and logged once.
#[derive(Debug)]
enum Close {
    /// The client sent DISCONNECT.
    Disconnect,
    /// The client closed the socket without DISCONNECT.
    Eof,
    Io(String),
    ConnectTimeout,
    KeepAlive,
    WriteTimeout,
    /// A newer connection with the same device and client id took over (MQTT-3.1.4-2).
    TakenOver,
    /// The device's key was rotated, disabled or deleted.
    KeyRevoked,
    Shutdown,
    NotAuthorised(AuthFailure),
    UnsupportedProtocol(String),
    BadClientId,
    /// PUBLISH on any topic other than the device's own readings topic.
    TopicRefused(String),
    Qos2Refused,
    PacketTooLarge(usize),
    Protocol(String),
}

impl Close {
    fn kind(&self) -> &'static str {
        match self {
            Close::Disconnect => "disconnect",
            Close::Eof => "eof",
            Close::Io(_) => "io_error",
            Close::ConnectTimeout => "connect_timeout",
            Close::KeepAlive => "keepalive_timeout",
            Close::WriteTimeout => "write_timeout",
            Close::TakenOver => "taken_over",
            Close::KeyRevoked => "key_revoked",
            Close::Shutdown => "shutdown",
            Close::NotAuthorised(_) => "auth_failed",
            Close::UnsupportedProtocol(_) => "unsupported_protocol",
            Close::BadClientId => "bad_client_id",
            Close::TopicRefused(_) => "publish_refused_topic",
            Close::Qos2Refused => "qos2_refused",
            Close::PacketTooLarge(_) => "packet_too_large",
            Close::Protocol(_) => "protocol_error",
        }
    }

    fn drain_timeout(&self, settings: &MqttSettings) -> Duration {
        match self {
            Close::KeyRevoked => REVOKED_DRAIN.min(settings.drain_timeout),
            _ => settings.drain_timeout,
        }
    }

    fn from_codec(e: CodecError) -> Close {
        match e {
            CodecError::PayloadSizeLimitExceeded(n) => Close::PacketTooLarge(n),
            CodecError::Io(e) => Close::Io(e.to_string()),
            other => Close::Protocol(other.to_string()),
        }
    }

    fn emit(&self, shared: &Shared, device_id: Option<Uuid>, abandoned: usize) {
        let kind = self.kind();
        shared.metrics.mqtt_events.with_label_values(&[kind]).inc();
        if abandoned > 0 {
            shared
                .metrics
                .mqtt_events
                .with_label_values(&["inflight_abandoned"])
                .inc_by(abandoned as u64);
        }
        if let Close::NotAuthorised(reason) = self {
            shared
                .metrics
                .device_auth_failures
                .with_label_values(&["mqtt", reason.as_str()])
                .inc();
        }
        let Some(suppressed) = shared.log_limiter.allow(kind) else {
            return;
        };
        let device_id = device_id.map(tracing::field::display);
        match self {
            Close::Disconnect | Close::Eof | Close::Shutdown => {
                tracing::debug!(device_id, kind, abandoned, "MQTT connection closed.")
            }
            Close::Io(error) => {
                tracing::info!(device_id, kind, abandoned, error = %error, suppressed, "MQTT connection failed.")
            }
            Close::ConnectTimeout | Close::KeepAlive | Close::WriteTimeout => {
                tracing::info!(
                    device_id,
                    kind,
                    abandoned,
                    suppressed,
                    "MQTT connection timed out."
                )
            }
            Close::TakenOver => {
                tracing::info!(
                    device_id,
                    kind,
                    abandoned,
                    suppressed,
                    "MQTT connection taken over by a newer one with the same client id."
                )
            }
            Close::KeyRevoked => {
                tracing::info!(
                    device_id,
                    kind,
                    abandoned,
                    suppressed,
                    "MQTT connection closed: the device key was revoked."
                )
            }
            Close::NotAuthorised(reason) => {
                tracing::info!(
                    status = "refused",
                    reason = reason.as_str(),
                    suppressed,
                    "MQTT CONNECT refused: not authorised."
                )
            }
            Close::UnsupportedProtocol(what) => {
                tracing::info!(protocol = %what, suppressed, "MQTT CONNECT refused: only MQTT 3.1.1 is supported.")
            }
            Close::BadClientId => {
                tracing::info!(
                    suppressed,
                    "MQTT CONNECT refused: an empty client id needs a clean session."
                )
            }
            Close::TopicRefused(topic) => {
                tracing::warn!(device_id, topic = %topic, abandoned, suppressed, "Refused publish on a topic that is not the device's own; connection closed.")
            }
            Close::Qos2Refused => {
                tracing::warn!(
                    device_id,
                    abandoned,
                    suppressed,
                    "Refused QoS 2 publish; connection closed."
                )
            }
            Close::PacketTooLarge(size) => {
                tracing::warn!(
                    device_id,
                    size,
                    limit = shared.settings.max_packet_bytes,
                    abandoned,
                    suppressed,
                    "MQTT packet over the size limit; connection closed."
                )
            }
            Close::Protocol(error) => {
                tracing::warn!(device_id, error = %error, abandoned, suppressed, "MQTT protocol error; connection closed.")
            }
        }
    }
}

/// Things the endpoint counts and logs without closing the connection.
enum Event<'a> {
    ConnectionCap {
        peer: SocketAddr,
    },
    AcceptFailed {
        error: &'a std::io::Error,
    },
    Connected {
        session_present: bool,
    },
    SubscribeRefused {
        filters: usize,
    },
    /// The payload as a whole was refused (not JSON, empty, no valid reading, too large).
    BadPayload {
        qos: u8,
        error: &'a IngestError,
    },
    /// Some readings of an accepted payload were invalid.
    ReadingsRejected {
        accepted: &'a Accepted,
    },
    PublishRetry {
        attempt: u32,
        error: &'a IngestError,
    },
    Qos0Lost {
        error: &'a IngestError,
    },
}

impl Event<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Event::ConnectionCap { .. } => "connection_cap",
            Event::AcceptFailed { .. } => "accept_failed",
            Event::Connected { .. } => "connected",
            Event::SubscribeRefused { .. } => "subscribe_refused",
            Event::BadPayload { .. } => "bad_payload",
            Event::ReadingsRejected { .. } => "readings_rejected",
            Event::PublishRetry { .. } => "publish_retry",
            Event::Qos0Lost { .. } => "qos0_lost",
        }
    }

    fn emit(&self, shared: &Shared, device_id: Option<Uuid>) {
        let kind = self.kind();
        shared.metrics.mqtt_events.with_label_values(&[kind]).inc();
        if let Event::Connected { session_present } = self {
            // One per connection: lifecycle detail, kept out of the INFO stream.
            tracing::debug!(
                device_id = device_id.map(tracing::field::display),
                kind,
                session_present,
                "MQTT connection accepted."
            );
            return;
        }
        let Some(suppressed) = shared.log_limiter.allow(kind) else {
            return;
        };
        let device_id = device_id.map(tracing::field::display);
        match self {
            Event::ConnectionCap { peer } => tracing::warn!(
                %peer,
                limit = shared.settings.max_connections,
                suppressed,
                "MQTT connection refused: the connection cap is reached."
            ),
            Event::AcceptFailed { error } => {
                tracing::warn!(error = %error, suppressed, "Cannot accept an MQTT connection.")
            }
            Event::Connected { .. } => {}
            Event::SubscribeRefused { filters } => tracing::info!(
                device_id,
                filters,
                suppressed,
                "Refused SUBSCRIBE: the endpoint is receive-only."
            ),
            Event::BadPayload { qos, error } => tracing::warn!(
                device_id,
                qos,
                error = %describe(error),
                suppressed,
                "Refused MQTT payload; nothing stored from it."
            ),
            Event::ReadingsRejected { accepted } => tracing::info!(
                device_id,
                accepted = accepted.accepted,
                rejected = accepted.rejected.len(),
                first_error = accepted
                    .rejected
                    .first()
                    .map(|r| r.error.as_str())
                    .unwrap_or_default(),
                suppressed,
                "Some readings of an MQTT payload were invalid; the valid ones were stored."
            ),
            Event::PublishRetry { attempt, error } => tracing::warn!(
                device_id,
                attempt,
                error = %error,
                suppressed,
                "JetStream cannot take an MQTT publish; holding the PUBACK and retrying."
            ),
            Event::Qos0Lost { error } => tracing::warn!(
                device_id,
                error = %error,
                suppressed,
                "QoS 0 publish lost: JetStream cannot take it."
            ),
        }
    }
}

/// A one-line description of a refused payload: the body error, or the first invalid reading.
fn describe(error: &IngestError) -> String {
    match error {
        IngestError::NoValidReadings(rejected) => match rejected.first() {
            Some(r) => format!(
                "none of the {} readings is valid (reading {}: {})",
                rejected.len(),
                r.index,
                r.error
            ),
            None => error.to_string(),
        },
        other => other.to_string(),
    }
}

/// Bounds log volume per event kind across all connections (a flood of bad payloads or failed
/// logins must not flood the log); the metric still counts every event.
#[derive(Default)]
struct LogLimiter {
    windows: Mutex<HashMap<&'static str, Window>>,
}

struct Window {
    started: Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// `Some(lines suppressed since the last one logged)` when this line may be logged.
    fn allow(&self, kind: &'static str) -> Option<u64> {
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry(kind).or_insert(Window {
            started: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= Duration::from_secs(1) {
            w.started = now;
            w.logged = 0;
        }
        if w.logged < LOG_LINES_PER_KIND_PER_SEC {
            w.logged += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

/// Open connections by (device, client id), for takeover, and the persistent-session markers.
///
/// The endpoint keeps no messages for anyone, so a session's state is empty by construction; the
/// marker only lets it answer `session_present = 1` to a client that reconnects with
/// `clean_session = 0`, which is what makes such clients (rumqttc, for one) resend their
/// unacknowledged QoS 1 messages instead of discarding them. Takeover is per gateway: gateways
/// share no state, and a device connected to two gateways at once keeps both connections.
#[derive(Default)]
struct Sessions {
    entries: Mutex<HashMap<(Uuid, String), SessionEntry>>,
}

struct SessionEntry {
    /// The connection that holds this client id now; `None` for a remembered persistent session.
    conn_id: Option<u64>,
    kick: CancellationToken,
    persistent: bool,
    idle_since: Instant,
}

struct Registration {
    kicked: CancellationToken,
    session_present: bool,
}

impl Sessions {
    fn register(
        &self,
        device_id: Uuid,
        client_id: &str,
        conn_id: u64,
        clean_session: bool,
    ) -> Registration {
        let kicked = CancellationToken::new();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let previous = entries.insert(
            (device_id, client_id.to_owned()),
            SessionEntry {
                conn_id: Some(conn_id),
                kick: kicked.clone(),
                persistent: !clean_session,
                idle_since: Instant::now(),
            },
        );
        let mut session_present = false;
        if let Some(previous) = previous {
            if previous.conn_id.is_some() {
                previous.kick.cancel();
            }
            session_present = !clean_session && previous.persistent;
        }
        if entries.len() > MAX_IDLE_SESSIONS {
            entries.retain(|_, e| e.conn_id.is_some() || e.idle_since.elapsed() < SESSION_EXPIRY);
            if entries.len() > MAX_IDLE_SESSIONS {
                entries.retain(|_, e| e.conn_id.is_some());
            }
        }
        Registration {
            kicked,
            session_present,
        }
    }

    /// Forgets connection `conn_id` unless a newer connection already took its place.
    fn release(&self, device_id: Uuid, client_id: &str, conn_id: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let key = (device_id, client_id.to_owned());
        let Some(entry) = entries.get_mut(&key) else {
            return;
        };
        if entry.conn_id != Some(conn_id) {
            return;
        }
        if entry.persistent {
            entry.conn_id = None;
            entry.idle_since = Instant::now();
        } else {
            entries.remove(&key);
        }
    }
}

struct Shared {
    ingestor: Ingestor,
    registry: Arc<KeyRegistry>,
    metrics: Metrics,
    settings: MqttSettings,
    sessions: Sessions,
    open: AtomicUsize,
    next_conn_id: AtomicU64,
    status: Arc<MqttStatus>,
    log_limiter: LogLimiter,
}

/// Counts one open connection for as long as it lives, whichever way its task ends.
struct OpenSlot(Arc<Shared>);

impl OpenSlot {
    fn take(shared: &Arc<Shared>) -> Option<OpenSlot> {
        let before = shared.open.fetch_add(1, Ordering::AcqRel);
        if before >= shared.settings.max_connections {
            shared.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        shared.metrics.mqtt_connections_open.inc();
        Some(OpenSlot(shared.clone()))
    }
}

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.mqtt_connections_open.dec();
    }
}

/// The bound MQTT listener; [`run`](Self::run) serves it until cancelled.
pub struct MqttServer {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl MqttServer {
    pub fn new(
        listener: TcpListener,
        ingestor: Ingestor,
        registry: Arc<KeyRegistry>,
        metrics: Metrics,
        settings: MqttSettings,
    ) -> Self {
        let shared = Arc::new(Shared {
            ingestor,
            registry,
            metrics,
            settings,
            sessions: Sessions::default(),
            open: AtomicUsize::new(0),
            next_conn_id: AtomicU64::new(1),
            status: Arc::new(MqttStatus::default()),
            log_limiter: LogLimiter::default(),
        });
        Self { listener, shared }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub fn status(&self) -> Arc<MqttStatus> {
        self.shared.status.clone()
    }

    /// Accepts until `cancel` fires, then closes the listening socket (new clients are refused
    /// by the OS and go to another gateway), lets every connection finish the publishes it has
    /// already read (up to the drain timeout), and returns when all are closed.
    pub async fn run(self, cancel: CancellationToken) {
        let Self { listener, shared } = self;
        let connections = TaskTracker::new();
        shared.status.accepting.store(true, Ordering::Release);
        loop {
            let accepted = tokio::select! {
                _ = cancel.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Usually out of file descriptors: wait for connections to close.
                    Event::AcceptFailed { error: &error }.emit(&shared, None);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            };
            let Some(slot) = OpenSlot::take(&shared) else {
                Event::ConnectionCap { peer }.emit(&shared, None);
                drop(stream);
                continue;
            };
            // PUBACKs are small and latency matters more than packing them.
            let _ = stream.set_nodelay(true);
            let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!(
                "mqtt_connection",
                module = "mqtt",
                %peer,
                conn_id,
                device_id = tracing::field::Empty,
                client_id = tracing::field::Empty,
            );
            connections.spawn(
                Connection::new(shared.clone(), stream, conn_id, slot)
                    .serve(cancel.clone())
                    .instrument(span),
            );
        }
        shared.status.accepting.store(false, Ordering::Release);
        drop(listener);
        connections.close();
        connections.wait().await;
    }
}

/// The device a connection authenticated as.
struct Bound {
    device_id: Uuid,
    key_id: String,
    client_id: String,
    keep_alive: Option<Duration>,
    kicked: CancellationToken,
}

/// What an in-flight publish turns into when it completes: the packet id to PUBACK, if any.
type InFlight = FuturesOrdered<BoxFuture<'static, Option<u16>>>;

struct Connection {
    shared: Arc<Shared>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    /// Bytes read and not yet framed into a packet.
    buf: BytesMut,
    /// Packets staged for the next write.
    out: BytesMut,
    conn_id: u64,
    _slot: OpenSlot,
}

impl Connection {
    fn new(shared: Arc<Shared>, stream: TcpStream, conn_id: u64, slot: OpenSlot) -> Self {
        let (rd, wr) = stream.into_split();
        Self {
            shared,
            rd,
            wr,
            buf: BytesMut::with_capacity(4 * 1024),
            out: BytesMut::with_capacity(256),
            conn_id,
            _slot: slot,
        }
    }

    async fn serve(mut self, shutdown: CancellationToken) {
        // Subscribed before the key is checked, so a revocation that lands between the check
        // and the first select is still seen.
        let mut revocations = self.shared.registry.subscribe_revocations();
        let bound = tokio::select! {
            _ = shutdown.cancelled() => Err(Close::Shutdown),
            r = tokio::time::timeout(self.shared.settings.connect_timeout, self.handshake()) => {
                r.unwrap_or(Err(Close::ConnectTimeout))
            }
        };
        let bound = match bound {
            Ok(bound) => bound,
            Err(close) => {
                close.emit(&self.shared, None, 0);
                self.finish().await;
                return;
            }
        };
        let mut inflight = InFlight::new();
        let close = self
            .run(&bound, &mut inflight, &mut revocations, &shutdown)
            .await;
        let abandoned = self
            .drain(&mut inflight, close.drain_timeout(&self.shared.settings))
            .await;
        close.emit(&self.shared, Some(bound.device_id), abandoned);
        self.shared
            .sessions
            .release(bound.device_id, &bound.client_id, self.conn_id);
        self.finish().await;
    }

    /// Reads CONNECT, authenticates, binds the connection and answers CONNACK.
    async fn handshake(&mut self) -> Result<Bound, Close> {
        let packet = loop {
            match Packet::read(&mut self.buf, self.shared.settings.max_packet_bytes) {
                Ok(packet) => break packet,
                Err(CodecError::InsufficientBytes(n)) => {
                    self.buf.reserve(n);
                    match self.rd.read_buf(&mut self.buf).await {
                        Ok(0) => return Err(Close::Eof),
                        Ok(_) => {}
                        Err(e) => return Err(Close::Io(e.to_string())),
                    }
                }
                Err(CodecError::InvalidProtocolLevel(level)) => {
                    // MQTT-3.1.2-2: answer 0x01 to a protocol level we do not speak.
                    self.connack(ConnectReturnCode::RefusedProtocolVersion, false)
                        .await?;
                    return Err(Close::UnsupportedProtocol(format!("level {level}")));
                }
                Err(CodecError::InvalidProtocol) => {
                    // A protocol name other than "MQTT": MQTT 3.1 says "MQIsdp". Its clients
                    // understand CONNACK 0x01 (unacceptable protocol version) too.
                    self.connack(ConnectReturnCode::RefusedProtocolVersion, false)
                        .await?;
                    return Err(Close::UnsupportedProtocol("protocol name".into()));
                }
                Err(e) => return Err(Close::from_codec(e)),
            }
        };
        let Packet::Connect(connect) = packet else {
            return Err(Close::Protocol("the first packet was not CONNECT".into()));
        };
        let Connect {
            protocol,
            keep_alive,
            client_id,
            clean_session,
            login,
            ..
        } = connect;
        if protocol != Protocol::V4 {
            self.connack(ConnectReturnCode::RefusedProtocolVersion, false)
                .await?;
            return Err(Close::UnsupportedProtocol("MQTT 5".into()));
        }
        let (device_id, key_id) = match authenticate(&self.shared.registry, login.as_ref()) {
            Ok(bound) => bound,
            Err(reason) => {
                self.connack(ConnectReturnCode::NotAuthorized, false)
                    .await?;
                return Err(Close::NotAuthorised(reason));
            }
        };
        let client_id = if client_id.is_empty() {
            if !clean_session {
                // MQTT-3.1.3-8.
                self.connack(ConnectReturnCode::BadClientId, false).await?;
                return Err(Close::BadClientId);
            }
            // MQTT-3.1.3-6: the server assigns one. Random, so nothing is ever deduplicated
            // across such connections; a client without an id keeps no session to redeliver.
            format!("auto-{}", Uuid::new_v4().simple())
        } else {
            client_id
        };
        let span = tracing::Span::current();
        span.record("device_id", tracing::field::display(device_id));
        span.record("client_id", client_id.as_str());
        let registration =
            self.shared
                .sessions
                .register(device_id, &client_id, self.conn_id, clean_session);
        let bound = Bound {
            device_id,
            key_id,
            client_id,
            keep_alive: (keep_alive > 0).then(|| {
                Duration::from_millis(u64::from(keep_alive) * 10 * KEEP_ALIVE_FACTOR_PERCENT)
            }),
            kicked: registration.kicked,
        };
        if let Err(close) = self
            .connack(ConnectReturnCode::Success, registration.session_present)
            .await
        {
            self.shared
                .sessions
                .release(device_id, &bound.client_id, self.conn_id);
            return Err(close);
        }
        Event::Connected {
            session_present: registration.session_present,
        }
        .emit(&self.shared, Some(device_id));
        Ok(bound)
    }

    async fn connack(
        &mut self,
        code: ConnectReturnCode,
        session_present: bool,
    ) -> Result<(), Close> {
        self.stage(Packet::ConnAck(ConnAck::new(code, session_present)))?;
        self.flush().await
    }

    /// Serves an authenticated connection until it must close, and says why.
    async fn run(
        &mut self,
        bound: &Bound,
        inflight: &mut InFlight,
        revocations: &mut broadcast::Receiver<Uuid>,
        shutdown: &CancellationToken,
    ) -> Close {
        let max_inflight = self.shared.settings.max_inflight;
        let mut last_packet = Instant::now();
        let mut revocations_open = true;
        loop {
            // Frame what is already buffered, as long as there is room for more publishes.
            while inflight.len() < max_inflight {
                match Packet::read(&mut self.buf, self.shared.settings.max_packet_bytes) {
                    Ok(packet) => {
                        last_packet = Instant::now();
                        if let Err(close) = self.on_packet(packet, bound, inflight) {
                            return close;
                        }
                    }
                    Err(CodecError::InsufficientBytes(n)) => {
                        self.buf.reserve(n);
                        break;
                    }
                    Err(e) => return Close::from_codec(e),
                }
            }
            if let Err(close) = self.flush().await {
                return close;
            }
            // Full: stop reading the socket until a publish completes. The client's keep-alive
            // packets then wait in the socket too, so its timer does not run meanwhile.
            let reading = inflight.len() < max_inflight;
            let keep_alive = bound.keep_alive.filter(|_| reading);
            let keep_alive_expired = async {
                match keep_alive {
                    Some(ka) => tokio::time::sleep_until(last_packet + ka).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Close::Shutdown,
                _ = bound.kicked.cancelled() => return Close::TakenOver,
                revoked = revocations.recv(), if revocations_open => match revoked {
                    Ok(id) if id == bound.device_id => return Close::KeyRevoked,
                    Ok(_) => {}
                    // Missed some announcements: ask the registry directly.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if !self.shared.registry.still_valid(bound.device_id, &bound.key_id) {
                            return Close::KeyRevoked;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => revocations_open = false,
                },
                Some(done) = inflight.next(), if !inflight.is_empty() => {
                    if !reading {
                        last_packet = Instant::now();
                    }
                    self.stage_puback(done);
                    // Whatever else completed meanwhile goes out in the same write.
                    while let Some(Some(done)) = inflight.next().now_or_never() {
                        self.stage_puback(done);
                    }
                }
                read = self.rd.read_buf(&mut self.buf), if reading => match read {
                    Ok(0) => return Close::Eof,
                    Ok(_) => {}
                    Err(e) => return Close::Io(e.to_string()),
                },
                _ = keep_alive_expired => return Close::KeepAlive,
            }
        }
    }

    fn on_packet(
        &mut self,
        packet: Packet,
        bound: &Bound,
        inflight: &mut InFlight,
    ) -> Result<(), Close> {
        match packet {
            Packet::Publish(publish) => self.on_publish(publish, bound, inflight),
            Packet::PingReq => self.stage(Packet::PingResp),
            Packet::Subscribe(subscribe) => {
                // Receive-only: a failure code per filter (MQTT-3.9.3) keeps a client library
                // that subscribes on start working, where closing would make it reconnect in a
                // loop.
                Event::SubscribeRefused {
                    filters: subscribe.filters.len(),
                }
                .emit(&self.shared, Some(bound.device_id));
                let codes = vec![SubscribeReasonCode::Failure; subscribe.filters.len()];
                self.stage(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            }
            // MQTT-3.10.4-5: UNSUBACK even when nothing was subscribed.
            Packet::Unsubscribe(unsubscribe) => {
                self.stage(Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid)))
            }
            Packet::Disconnect => Err(Close::Disconnect),
            Packet::Connect(_) => Err(Close::Protocol("a second CONNECT".into())),
            Packet::ConnAck(_)
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(Close::Protocol(format!(
                "a client may not send {}",
                packet_name(&packet)
            ))),
        }
    }

    fn on_publish(
        &mut self,
        publish: Publish,
        bound: &Bound,
        inflight: &mut InFlight,
    ) -> Result<(), Close> {
        if topic_device(&publish.topic) != Some(bound.device_id) {
            return Err(Close::TopicRefused(
                publish.topic.chars().take(200).collect(),
            ));
        }
        let received_at_us = shared::now_us();
        let shared = self.shared.clone();
        let device_id = bound.device_id;
        match publish.qos {
            QoS::AtMostOnce => {
                inflight.push_back(Box::pin(publish_qos0(
                    shared,
                    device_id,
                    publish.payload,
                    received_at_us,
                )));
            }
            QoS::AtLeastOnce => {
                let key = redelivery_key(&bound.client_id, publish.pkid, &publish.payload);
                inflight.push_back(Box::pin(publish_qos1(
                    shared,
                    device_id,
                    Qos1 {
                        pkid: publish.pkid,
                        dup: publish.dup,
                        key,
                        payload: publish.payload,
                        received_at_us,
                    },
                )));
            }
            // Exactly-once would need the PUBREC/PUBREL state the endpoint does not keep;
            // refusing is clearer than silently downgrading.
            QoS::ExactlyOnce => return Err(Close::Qos2Refused),
        }
        Ok(())
    }

    fn stage(&mut self, packet: Packet) -> Result<(), Close> {
        packet
            .write(&mut self.out, usize::MAX)
            .map(drop)
            .map_err(|e| Close::Protocol(format!("cannot encode a reply: {e}")))
    }

    fn stage_puback(&mut self, done: Option<u16>) {
        if let Some(pkid) = done {
            // A PUBACK always encodes; there is nothing to handle.
            let _ = PubAck::new(pkid).write(&mut self.out);
        }
    }

    async fn flush(&mut self) -> Result<(), Close> {
        if self.out.is_empty() {
            return Ok(());
        }
        let result = tokio::time::timeout(WRITE_TIMEOUT, self.wr.write_all(&self.out)).await;
        self.out.clear();
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Close::Io(e.to_string())),
            Err(_) => Err(Close::WriteTimeout),
        }
    }

    /// Finishes the publishes already read from the socket, acknowledging what gets stored,
    /// for at most `timeout`; returns how many were abandoned (they get no PUBACK, so a QoS 1
    /// client redelivers them).
    async fn drain(&mut self, inflight: &mut InFlight, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        let mut writable = true;
        while !inflight.is_empty() {
            tokio::select! {
                done = inflight.next() => {
                    self.stage_puback(done.flatten());
                    if writable && self.flush().await.is_err() {
                        writable = false;
                    }
                    self.out.clear();
                }
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
        inflight.len()
    }

    async fn finish(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.wr.shutdown()).await;
    }
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// The device a CONNECT's credentials belong to, and the public id of its key (to re-check
/// validity when revocation announcements were missed).
fn authenticate(
    registry: &KeyRegistry,
    login: Option<&Login>,
) -> Result<(Uuid, String), AuthFailure> {
    let login = login.ok_or(AuthFailure::Missing)?;
    if login.username.is_empty() || login.password.is_empty() {
        return Err(AuthFailure::Missing);
    }
    let device_id = Uuid::parse_str(&login.username).map_err(|_| AuthFailure::Malformed)?;
    registry.authenticate_device(device_id, &login.password)?;
    let (key_id, _) = shared::keys::split(&login.password).ok_or(AuthFailure::Malformed)?;
    Ok((device_id, key_id.to_owned()))
}

struct Qos1 {
    pkid: u16,
    dup: bool,
    key: String,
    payload: Bytes,
    received_at_us: i64,
}

/// Stores a QoS 1 message and yields its packet id for the PUBACK once it is stored, or once it
/// is known it never can be (a bad payload: redelivering it cannot help, so it is acknowledged,
/// counted and logged). While JetStream cannot take it, it retries with the same message id, so
/// however many attempts reach the stream it is stored once.
async fn publish_qos1(shared: Arc<Shared>, device_id: Uuid, msg: Qos1) -> Option<u16> {
    let Qos1 {
        pkid,
        dup,
        mut key,
        payload,
        received_at_us,
    } = msg;
    let mut first_attempt = true;
    let mut republished = false;
    let mut attempt = 0u32;
    let mut pause = RETRY_FIRST;
    loop {
        attempt += 1;
        let result = shared
            .ingestor
            .ingest(
                device_id,
                Channel::Mqtt,
                &payload,
                received_at_us,
                Some(&key),
            )
            .await;
        match result {
            Ok(accepted)
                if accepted.duplicate && must_republish(dup, first_attempt, republished) =>
            {
                key = format!("{key}-{}", Uuid::new_v4().simple());
                republished = true;
            }
            Ok(accepted) => {
                if !accepted.rejected.is_empty() {
                    Event::ReadingsRejected {
                        accepted: &accepted,
                    }
                    .emit(&shared, Some(device_id));
                }
                return Some(pkid);
            }
            Err(error @ IngestError::Unavailable(_)) => {
                Event::PublishRetry {
                    attempt,
                    error: &error,
                }
                .emit(&shared, Some(device_id));
                first_attempt = false;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(
                error @ (IngestError::Body(_)
                | IngestError::NoValidReadings(_)
                | IngestError::NoReadings),
            ) => {
                Event::BadPayload {
                    qos: 1,
                    error: &error,
                }
                .emit(&shared, Some(device_id));
                return Some(pkid);
            }
        }
    }
}

/// QoS 0 is at most once by definition: one attempt; what JetStream cannot take is counted as
/// lost (`mqtt_events_total{kind="qos0_lost"}`).
async fn publish_qos0(
    shared: Arc<Shared>,
    device_id: Uuid,
    payload: Bytes,
    received_at_us: i64,
) -> Option<u16> {
    let result = shared
        .ingestor
        .ingest(device_id, Channel::Mqtt, &payload, received_at_us, None)
        .await;
    match result {
        Ok(accepted) if !accepted.rejected.is_empty() => {
            Event::ReadingsRejected {
                accepted: &accepted,
            }
            .emit(&shared, Some(device_id));
        }
        Ok(_) => {}
        Err(error @ IngestError::Unavailable(_)) => {
            Event::Qos0Lost { error: &error }.emit(&shared, Some(device_id))
        }
        Err(
            error @ (IngestError::Body(_)
            | IngestError::NoValidReadings(_)
            | IngestError::NoReadings),
        ) => Event::BadPayload {
            qos: 0,
            error: &error,
        }
        .emit(&shared, Some(device_id)),
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_readings_topic_names_a_device() {
        let id = Uuid::new_v4();
        let upper = id.to_string().to_uppercase();
        let cases: Vec<(String, Option<Uuid>)> = vec![
            (format!("devices/{id}/readings"), Some(id)),
            (format!("devices/{upper}/readings"), Some(id)),
            (format!("devices/{id}/readings/"), None),
            (format!("devices/{id}/readings/x"), None),
            (format!("/devices/{id}/readings"), None),
            (format!("devices/{id}"), None),
            (format!("devices/{id}/reading"), None),
            (format!("devices/{}/readings", id.simple()), None),
            (format!("devices/{{{id}}}/readings"), None),
            (format!("devices/urn:uuid:{id}/readings"), None),
            ("devices/+/readings".into(), None),
            ("devices/#".into(), None),
            ("devices//readings".into(), None),
            (
                "devices/not-a-uuid-at-all-but-36-chars-long/readings".into(),
                None,
            ),
            (String::new(), None),
        ];
        for (topic, expected) in cases {
            assert_eq!(topic_device(&topic), expected, "{topic:?}");
        }
    }

    #[test]
    fn the_redelivery_key_depends_on_client_packet_and_payload_only() {
        let k = redelivery_key("sensor-1", 7, b"{\"metric\":\"t\",\"value\":1}");
        assert_eq!(
            k,
            redelivery_key("sensor-1", 7, b"{\"metric\":\"t\",\"value\":1}")
        );
        assert_ne!(
            k,
            redelivery_key("sensor-2", 7, b"{\"metric\":\"t\",\"value\":1}")
        );
        assert_ne!(
            k,
            redelivery_key("sensor-1", 8, b"{\"metric\":\"t\",\"value\":1}")
        );
        assert_ne!(
            k,
            redelivery_key("sensor-1", 7, b"{\"metric\":\"t\",\"value\":2}")
        );
        // The length prefix keeps the client id and what follows from running together.
        assert_ne!(
            redelivery_key("a", 0x0101, b""),
            redelivery_key("a\u{1}", 0x01, b"\x01")
        );
        // A header-safe, fixed-length id.
        assert!(k.starts_with("mqtt-") && k.len() == 5 + 32, "{k}");
        assert!(k[5..].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn the_redelivery_key_is_stable_across_builds() {
        // FNV-1a 128 of the empty input is its offset basis; a changed constant or algorithm
        // would make redeliveries during a rolling upgrade be stored twice.
        let mut h = Fnv128::new();
        h.write(b"");
        assert_eq!(h.0, 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d);
        let mut h = Fnv128::new();
        h.write(b"a");
        assert_eq!(h.0, 0xd228_cb69_6f1a_8caf_7891_2b70_4e4a_8964);
    }

    #[test]
    fn only_a_first_delivery_on_its_first_attempt_is_republished_after_a_duplicate() {
        // (dup flag, first attempt, already republished) → republish?
        let table = [
            ((false, true, false), true),
            ((true, true, false), false),
            ((false, false, false), false),
            ((true, false, false), false),
            ((false, true, true), false),
            ((true, true, true), false),
            ((false, false, true), false),
        ];
        for ((dup, first, again), expected) in table {
            assert_eq!(
                must_republish(dup, first, again),
                expected,
                "dup={dup} first={first} republished={again}"
            );
        }
    }

    #[test]
    fn sessions_kick_the_older_connection_and_remember_persistent_ones() {
        let sessions = Sessions::default();
        let d = Uuid::new_v4();
        let first = sessions.register(d, "c", 1, false);
        assert!(!first.session_present);
        let second = sessions.register(d, "c", 2, false);
        assert!(
            first.kicked.is_cancelled(),
            "the older connection is taken over"
        );
        assert!(second.session_present);
        // The older connection ending must not forget the newer one.
        sessions.release(d, "c", 1);
        let third = sessions.register(d, "c", 3, true);
        assert!(second.kicked.is_cancelled());
        assert!(!third.session_present, "a clean session never has one");
        sessions.release(d, "c", 3);
        assert!(!sessions.register(d, "c", 4, false).session_present);
        // Another device with the same client id is someone else.
        let other = sessions.register(Uuid::new_v4(), "c", 5, false);
        assert!(!other.session_present);
    }

    #[test]
    fn the_log_limiter_suppresses_a_flood_and_reports_how_much() {
        let limiter = LogLimiter::default();
        let allowed = (0..100).filter(|_| limiter.allow("k").is_some()).count();
        assert_eq!(allowed, LOG_LINES_PER_KIND_PER_SEC as usize);
        assert_eq!(limiter.allow("other"), Some(0));
    }
}
