//! Turning a device's JSON body into validated readings (DESIGN §3). Pure: the caller passes the
//! receive time, so every rule is testable without a clock.
//!
//! Accepted shapes: `{"readings":[…]}`, a bare array of readings, or one reading object. Every
//! reading is checked on its own: a bad reading is reported by index and never sinks the valid
//! ones beside it. Values are read from the raw JSON text (`RawValue`) so that a number too large
//! for a double (`1e400`) is a per-reading error rather than a parse failure of the whole body.

use crate::wire::Reading;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Limits applied to every body, whichever channel it came on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_readings: usize,
    /// How far in the future a timestamp may be, for devices whose clocks run fast.
    pub future_skew_ms: i64,
    /// Nothing older than this is accepted (epoch ms). Default 2000-01-01 so that years-old real
    /// data replays as it is, while epoch *seconds* sent as milliseconds (1970) are caught.
    pub horizon_ms: i64,
}

/// 2000-01-01T00:00:00Z in epoch milliseconds.
pub const DEFAULT_HORIZON_MS: i64 = 946_684_800_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_readings: 10_000,
            future_skew_ms: 5 * 60 * 1000,
            horizon_ms: DEFAULT_HORIZON_MS,
        }
    }
}

/// One reading that was not accepted, by its position in the body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub index: usize,
    pub error: String,
}

/// The outcome for a body that was well-formed as a whole.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejection>,
}

/// Faults of the body as a whole: nothing in it is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is empty; send {{\"readings\":[…]}}, an array of readings, or one reading")]
    Empty,
    #[error("the body is not valid JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    WrongShape(String),
    #[error("the body is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("the body has {count} readings, over the limit of {limit} per request")]
    TooManyReadings { count: usize, limit: usize },
}

/// Parses and validates a body received at `now_ms`.
pub fn parse(body: &[u8], now_ms: i64, limits: &Limits) -> Result<Parsed, BodyError> {
    if body.len() > limits.max_body_bytes {
        return Err(BodyError::TooLarge {
            size: body.len(),
            limit: limits.max_body_bytes,
        });
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| BodyError::NotJson(format!("the body is not UTF-8 ({e})")))?;
    if text.trim().is_empty() {
        return Err(BodyError::Empty);
    }
    // Many encoders write non-finite floats as bare NaN/Infinity tokens, which are not JSON. They
    // are turned into strings so that the one bad reading is rejected by index instead of the
    // whole batch; everything else about the body must already be valid JSON.
    let text: Cow<str> = match serde_json::from_str::<&RawValue>(text) {
        Ok(_) => Cow::Borrowed(text),
        Err(first) => match quote_non_finite_tokens(text) {
            Some(fixed) if serde_json::from_str::<&RawValue>(&fixed).is_ok() => Cow::Owned(fixed),
            _ => return Err(BodyError::NotJson(first.to_string())),
        },
    };
    let items = top_level_readings(&text)?;
    if items.len() > limits.max_readings {
        return Err(BodyError::TooManyReadings {
            count: items.len(),
            limit: limits.max_readings,
        });
    }
    let mut parsed = Parsed {
        readings: Vec::with_capacity(items.len()),
        rejected: Vec::new(),
    };
    for (index, raw) in items.into_iter().enumerate() {
        match parse_reading(raw, now_ms, limits) {
            Ok(r) => parsed.readings.push(r),
            Err(error) => parsed.rejected.push(Rejection { index, error }),
        }
    }
    Ok(parsed)
}

fn top_level_readings(text: &str) -> Result<Vec<&RawValue>, BodyError> {
    const SHAPE: &str = "expected {\"readings\":[…]}, an array of readings, or one reading object";
    let wrong = |detail: String| BodyError::WrongShape(format!("{detail}; {SHAPE}"));
    match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text)
            .map_err(|e| wrong(format!("the array could not be read ({e})"))),
        Some(b'{') => {
            #[derive(Deserialize)]
            struct Envelope<'a> {
                #[serde(default, borrow, deserialize_with = "present")]
                readings: Option<&'a RawValue>,
            }
            let envelope: Envelope = serde_json::from_str(text)
                .map_err(|e| wrong(format!("the object could not be read ({e})")))?;
            match envelope.readings {
                None => Ok(vec![
                    serde_json::from_str::<&RawValue>(text).map_err(|e| wrong(e.to_string()))?,
                ]),
                Some(list) => serde_json::from_str::<Vec<&RawValue>>(list.get())
                    .map_err(|_| wrong("\"readings\" must be an array".to_owned())),
            }
        }
        _ => Err(wrong("the body is a JSON scalar".to_owned())),
    }
}

/// Keeps an explicit `null` distinguishable from a missing field.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RawReading<'a> {
    #[serde(default, borrow, deserialize_with = "present")]
    metric: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    value: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    ts: Option<&'a RawValue>,
}

fn parse_reading(raw: &RawValue, now_ms: i64, limits: &Limits) -> Result<Reading, String> {
    if !raw.get().starts_with('{') {
        return Err(format!(
            "a reading must be a JSON object, got {}",
            kind_of(raw.get())
        ));
    }
    let r: RawReading =
        serde_json::from_str(raw.get()).map_err(|e| format!("unreadable reading: {e}"))?;
    let metric = parse_metric(r.metric)?;
    let value = parse_value(r.value)?;
    let ts_ms = parse_ts(r.ts, now_ms, limits)?;
    Ok(Reading {
        metric,
        ts_ms,
        value,
    })
}

pub const MAX_METRIC_LEN: usize = 128;

/// Whether `name` is a valid metric name: 1–128 characters of `[A-Za-z0-9_.:/-]`.
pub fn valid_metric(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_METRIC_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:/-".contains(&b))
}

fn parse_metric(raw: Option<&RawValue>) -> Result<String, String> {
    let raw = raw.ok_or("metric is required")?;
    let name: String = serde_json::from_str(raw.get())
        .map_err(|_| format!("metric must be a string, got {}", kind_of(raw.get())))?;
    if valid_metric(&name) {
        Ok(name)
    } else if name.is_empty() || name.chars().count() > MAX_METRIC_LEN {
        Err(format!(
            "metric must be 1-{MAX_METRIC_LEN} characters long, got {}",
            name.chars().count()
        ))
    } else {
        Err(format!(
            "metric {} may only contain A-Z a-z 0-9 _ . : / -",
            shorten(&name)
        ))
    }
}

fn parse_value(raw: Option<&RawValue>) -> Result<f64, String> {
    let raw = raw.ok_or("value is required")?;
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'-' | b'0'..=b'9') => {
            let v: f64 = text
                .parse()
                .map_err(|_| format!("value {} is not a number", shorten(text)))?;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(format!(
                    "value {} is outside the range of a 64-bit float",
                    shorten(text)
                ))
            }
        }
        Some(b'"') => {
            let s: String = serde_json::from_str(text).unwrap_or_default();
            let t = s.trim().trim_start_matches(['+', '-']).to_ascii_lowercase();
            if matches!(t.as_str(), "nan" | "inf" | "infinity") {
                Err(format!(
                    "value must be a finite JSON number; {} is not finite",
                    shorten(text)
                ))
            } else {
                Err(format!(
                    "value must be a JSON number, not a string (got {})",
                    shorten(text)
                ))
            }
        }
        _ => Err(format!(
            "value must be a finite JSON number, got {}",
            kind_of(text)
        )),
    }
}

fn parse_ts(raw: Option<&RawValue>, now_ms: i64, limits: &Limits) -> Result<i64, String> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok(now_ms);
    };
    let text = raw.get();
    let ts_ms = match text.as_bytes().first() {
        Some(b'"') => {
            let s: String = serde_json::from_str(text).unwrap_or_default();
            DateTime::parse_from_rfc3339(&s)
                .map_err(|_| {
                    format!(
                        "ts {} is not RFC 3339 with an offset (e.g. \"2026-12-03T10:00:00Z\") nor integer epoch milliseconds",
                        shorten(text)
                    )
                })?
                .timestamp_millis()
        }
        Some(b'-' | b'0'..=b'9') => {
            let ms: i64 = text.parse().map_err(|_| {
                format!(
                    "ts {} must be an integer of epoch milliseconds",
                    shorten(text)
                )
            })?;
            if ms < limits.horizon_ms
                && let Some(as_seconds) = ms.checked_mul(1000)
                && as_seconds >= limits.horizon_ms
                && as_seconds <= now_ms + limits.future_skew_ms
            {
                return Err(format!(
                    "ts {ms} is read as epoch milliseconds, which is {} in 1970, before the horizon {}; \
                     it looks like epoch seconds: send milliseconds ({as_seconds})",
                    rfc3339(ms),
                    rfc3339(limits.horizon_ms)
                ));
            }
            ms
        }
        _ => {
            return Err(format!(
                "ts must be an RFC 3339 string or integer epoch milliseconds, got {}",
                kind_of(text)
            ));
        }
    };
    if ts_ms > now_ms.saturating_add(limits.future_skew_ms) {
        return Err(format!(
            "ts {} is in the future: {} s ahead of the gateway's clock, more than the allowed skew of {} s",
            rfc3339(ts_ms),
            (ts_ms - now_ms) / 1000,
            limits.future_skew_ms / 1000
        ));
    }
    if ts_ms < limits.horizon_ms {
        return Err(format!(
            "ts {} is before the horizon {}",
            rfc3339(ts_ms),
            rfc3339(limits.horizon_ms)
        ));
    }
    Ok(ts_ms)
}

/// Formats epoch ms as RFC 3339 UTC, for messages and API answers.
pub fn rfc3339(ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{ms} ms"))
}

fn kind_of(json: &str) -> &'static str {
    match json.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'[') => "an array",
        Some(b'{') => "an object",
        _ => "a number",
    }
}

/// Bounds what is echoed back from the input, so an error message cannot be made huge.
fn shorten(s: &str) -> Cow<'_, str> {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(format!("{}…", s.chars().take(MAX).collect::<String>()))
    }
}

/// Puts quotes around bare `NaN`, `Infinity` and `-Infinity` tokens outside strings; `None` if
/// there were none.
fn quote_non_finite_tokens(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let (mut i, mut last, mut in_string, mut changed) = (0, 0, false, false);
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        let boundary_before = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        // Compared as bytes: `i` may be inside a multi-byte character (a BOM, an `é` outside a
        // string), where slicing the `str` would panic.
        let token = ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| {
            bytes[i..].starts_with(t.as_bytes())
                && !bytes
                    .get(i + t.len())
                    .is_some_and(|c| c.is_ascii_alphanumeric())
        });
        match token {
            Some(t) if boundary_before => {
                out.push_str(&text[last..i]);
                out.push('"');
                out.push_str(t);
                out.push('"');
                i += t.len();
                last = i;
                changed = true;
            }
            _ => i += 1,
        }
    }
    changed.then(|| {
        out.push_str(&text[last..]);
        out
    })
}

#[cfg(test)]
mod tests;
