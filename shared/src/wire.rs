//! The message format on the backbone: one batch of readings from one device.
//!
//! A message is one version byte followed by the bincode 2 (serde, standard config) encoding of
//! [`Batch`]. The version byte lets a newer processor read an older gateway's messages during a
//! rolling upgrade, and lets an older processor *terminate* (not retry forever) a format it cannot
//! read.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The format version written by this build. Version 2 carries times in microseconds (the
/// resolution PostgreSQL stores); version 1 carried milliseconds and is still read.
pub const WIRE_VERSION: u8 = 2;

/// How a batch reached the hub; carried for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    Http,
    Mqtt,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Http => "http",
            Channel::Mqtt => "mqtt",
        }
    }
}

/// One validated reading. `metric` is a position in [`Batch::metrics`]; `ts_us` is epoch
/// microseconds in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub metric: u32,
    pub ts_us: i64,
    pub value: f64,
}

/// All the valid readings of one request or one MQTT publish.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub device_id: Uuid,
    pub channel: Channel,
    /// When the gateway received the request (epoch µs): the time of readings sent without
    /// one, and the start of the end-to-end latency measurement.
    pub received_at_us: i64,
    /// The batch's distinct metric names, each once. A device sends a few metrics many times
    /// over, so readings refer to them by position: a name is parsed, allocated, sent, decoded
    /// and looked up once per batch instead of once per reading.
    pub metrics: Vec<String>,
    pub readings: Vec<Reading>,
}

impl Batch {
    /// The name of a reading's metric; `None` only for a reading not of this batch (a decoded
    /// batch has every position checked).
    pub fn metric_of(&self, reading: &Reading) -> Option<&str> {
        self.metrics
            .get(reading.metric as usize)
            .map(String::as_str)
    }
}

/// Version 1 of the format, read so that batches a gateway of the previous release left in the
/// stream are stored after a processor upgrade.
mod v1 {
    #[derive(serde::Deserialize)]
    pub struct Reading {
        pub metric: String,
        pub ts_ms: i64,
        pub value: f64,
    }

    #[derive(serde::Deserialize)]
    pub struct Batch {
        pub device_id: uuid::Uuid,
        pub channel: super::Channel,
        pub received_at_ms: i64,
        pub readings: Vec<Reading>,
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unsupported wire version {0} (this build reads version {WIRE_VERSION})")]
    UnsupportedVersion(u8),
    #[error("malformed batch: {0}")]
    Malformed(String),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a batch with the current version byte in front.
pub fn encode(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + batch.readings.len() * 24);
    out.push(WIRE_VERSION);
    // Encoding plain owned data into a Vec cannot fail: no I/O and no size limit is involved.
    if let Err(e) = bincode::serde::encode_into_std_write(batch, &mut out, config()) {
        unreachable!("bincode encoding into a Vec failed: {e}");
    }
    out
}

/// Decodes a message; any error is permanent for that message (retrying cannot help).
pub fn decode(bytes: &[u8]) -> Result<Batch, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    let batch: Batch = match version {
        WIRE_VERSION => decode_body(body)?,
        1 => from_v1(decode_body(body)?)?,
        other => return Err(DecodeError::UnsupportedVersion(other)),
    };
    let names = batch.metrics.len();
    if let Some(r) = batch.readings.iter().find(|r| r.metric as usize >= names) {
        return Err(DecodeError::Malformed(format!(
            "a reading names metric {} of {names}",
            r.metric
        )));
    }
    Ok(batch)
}

/// A version 1 batch (milliseconds, a name per reading) in today's form.
fn from_v1(old: v1::Batch) -> Result<Batch, DecodeError> {
    let us = |ms: i64| {
        ms.checked_mul(1000)
            .ok_or_else(|| DecodeError::Malformed(format!("time {ms} ms out of range")))
    };
    let mut metrics: Vec<String> = Vec::new();
    let mut readings = Vec::with_capacity(old.readings.len());
    for r in old.readings {
        let metric = match metrics.iter().position(|m| *m == r.metric) {
            Some(i) => i,
            None => {
                metrics.push(r.metric);
                metrics.len() - 1
            }
        };
        readings.push(Reading {
            metric: metric as u32,
            ts_us: us(r.ts_ms)?,
            value: r.value,
        });
    }
    Ok(Batch {
        device_id: old.device_id,
        channel: old.channel,
        received_at_us: us(old.received_at_ms)?,
        metrics,
        readings,
    })
}

fn decode_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    let (value, used): (T, usize) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Malformed(format!(
            "{} trailing bytes after the batch",
            body.len() - used
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Batch {
        Batch {
            device_id: Uuid::new_v4(),
            channel: Channel::Mqtt,
            received_at_us: 1_700_000_000_123_456,
            metrics: vec!["temperature".into(), "humidity_ratio".into(), "x".into()],
            readings: vec![
                Reading {
                    metric: 0,
                    ts_us: 1_423_000_000_000_001,
                    value: 24.3566666666667,
                },
                Reading {
                    metric: 1,
                    ts_us: -5,
                    value: 0.00476416302416414,
                },
                Reading {
                    metric: 2,
                    ts_us: i64::MAX,
                    value: -1e300,
                },
                Reading {
                    metric: 0,
                    ts_us: 1_423_000_000_000_002,
                    value: 0.0,
                },
            ],
        }
    }

    #[test]
    fn a_batch_round_trips_bit_for_bit() {
        let batch = sample();
        let decoded = decode(&encode(&batch)).unwrap();
        assert_eq!(decoded, batch);
        for (a, b) in decoded.readings.iter().zip(&batch.readings) {
            assert_eq!(a.value.to_bits(), b.value.to_bits());
        }
    }

    #[test]
    fn the_first_byte_is_the_version() {
        assert_eq!(encode(&sample())[0], WIRE_VERSION);
    }

    /// A batch a gateway of the previous release wrote (version 1, milliseconds) is read with
    /// its times in microseconds.
    #[test]
    fn a_version_1_batch_is_read_with_its_times_in_microseconds() {
        #[derive(Serialize)]
        struct R<'a>(&'a str, i64, f64);
        #[derive(Serialize)]
        struct B<'a>(Uuid, Channel, i64, Vec<R<'a>>);
        let id = Uuid::new_v4();
        let old = B(
            id,
            Channel::Http,
            1_700_000_000_123,
            vec![R("t", 1_423_000_000_007, 1.5)],
        );
        let mut bytes = vec![1u8];
        bincode::serde::encode_into_std_write(&old, &mut bytes, config()).unwrap();
        let batch = decode(&bytes).unwrap();
        assert_eq!(batch.device_id, id);
        assert_eq!(batch.received_at_us, 1_700_000_000_123_000);
        assert_eq!(batch.readings[0].ts_us, 1_423_000_000_007_000);
        assert_eq!(batch.readings[0].value, 1.5);
        // A version 1 time that overflows in microseconds is malformed, not wrapped.
        let huge = B(id, Channel::Http, 0, vec![R("t", i64::MAX, 1.0)]);
        let mut bytes = vec![1u8];
        bincode::serde::encode_into_std_write(&huge, &mut bytes, config()).unwrap();
        assert!(matches!(decode(&bytes), Err(DecodeError::Malformed(_))));
    }

    /// A reading that names a metric the batch does not have is malformed at decode, so that no
    /// later lookup can miss.
    #[test]
    fn a_metric_position_outside_the_batch_is_malformed() {
        let mut batch = sample();
        batch.readings[1].metric = 3;
        assert!(matches!(
            decode(&encode(&batch)),
            Err(DecodeError::Malformed(m)) if m.contains("metric 3 of 3")
        ));
    }

    #[test]
    fn another_version_is_refused_with_its_number() {
        let mut bytes = encode(&sample());
        bytes[0] = 9;
        match decode(&bytes) {
            Err(DecodeError::UnsupportedVersion(9)) => {}
            other => panic!("expected UnsupportedVersion(9), got {other:?}"),
        }
    }

    #[test]
    fn empty_truncated_and_padded_messages_are_malformed_not_panics() {
        assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
        let bytes = encode(&sample());
        for cut in 1..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "truncated at {cut} decoded");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(matches!(decode(&padded), Err(DecodeError::Malformed(_))));
        assert!(decode(&[WIRE_VERSION, 0xff, 0xff, 0xff]).is_err());
    }
}
