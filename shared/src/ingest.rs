//! Turning a device's JSON body into validated readings (docs/api.md). Pure: the caller passes the
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
use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// Limits applied to every body, whichever channel it came on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_readings: usize,
    /// How far in the future a timestamp may be (µs), for devices whose clocks run fast.
    pub future_skew_us: i64,
    /// Nothing older than this is accepted (epoch µs). Default 2000-01-01 so that years-old real
    /// data replays as it is, while epoch *seconds* sent as milliseconds (1970) are caught.
    pub horizon_us: i64,
}

/// 2000-01-01T00:00:00Z in epoch microseconds.
pub const DEFAULT_HORIZON_US: i64 = 946_684_800_000_000;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_readings: 10_000,
            future_skew_us: 5 * 60 * 1_000_000,
            horizon_us: DEFAULT_HORIZON_US,
        }
    }
}

/// One reading that was not accepted, by its position in the body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejection {
    pub index: usize,
    pub error: String,
}

/// The outcome for a body that was well-formed as a whole. Readings name their metric by
/// position in `metrics` (each distinct name once), as a [`crate::wire::Batch`] does.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub metrics: Vec<String>,
    pub readings: Vec<Reading>,
    pub rejected: Vec<Rejection>,
}

impl Parsed {
    /// The name of a reading's metric.
    pub fn metric_of(&self, reading: &Reading) -> Option<&str> {
        self.metrics
            .get(reading.metric as usize)
            .map(String::as_str)
    }
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

/// Parses and validates a body received at `now_us` (epoch µs), the time of readings that carry
/// none.
pub fn parse(body: &[u8], now_us: i64, limits: &Limits) -> Result<Parsed, BodyError> {
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
    // whole batch; everything else about the body must already be valid JSON. The repair runs
    // only when the body does not parse: the usual body is read once, not checked first.
    let repaired: String;
    let items = match top_level_readings(text) {
        Ok(items) => items,
        Err(TopLevel::Shape(e)) => return Err(e),
        Err(TopLevel::Syntax(first)) => {
            let not_json = || BodyError::NotJson(first.to_string());
            repaired = quote_non_finite_tokens(text).ok_or_else(not_json)?;
            match top_level_readings(&repaired) {
                Ok(items) => items,
                Err(TopLevel::Shape(e)) => return Err(e),
                Err(TopLevel::Syntax(_)) => return Err(not_json()),
            }
        }
    };
    if items.len() > limits.max_readings {
        return Err(BodyError::TooManyReadings {
            count: items.len(),
            limit: limits.max_readings,
        });
    }
    let mut parsed = Parsed {
        metrics: Vec::new(),
        readings: Vec::with_capacity(items.len()),
        rejected: Vec::new(),
    };
    // Each distinct name is copied out of the body once; readings carry its position.
    let mut positions: HashMap<Cow<str>, u32> = HashMap::new();
    let mut indexes = Vec::with_capacity(items.len());
    for (index, raw) in items.into_iter().enumerate() {
        match parse_reading(raw, now_us, limits) {
            Ok((name, ts_us, value)) => {
                let metric = match positions.get(&name) {
                    Some(&m) => m,
                    None => {
                        let m = parsed.metrics.len() as u32;
                        parsed.metrics.push(name.clone().into_owned());
                        positions.insert(name, m);
                        m
                    }
                };
                parsed.readings.push(Reading {
                    metric,
                    ts_us,
                    value,
                });
                indexes.push(index);
            }
            Err(error) => parsed.rejected.push(Rejection { index, error }),
        }
    }
    reject_repeats(&mut parsed, &indexes);
    Ok(parsed)
}

/// A series holds one value per timestamp, so storage keeps the first of two readings with the
/// same metric and time and drops the other. Within one body that would be a reading counted as
/// accepted and never stored; it is refused here instead, naming the reading it repeats. (The
/// usual cause: several readings of one metric without `ts`, which all take the receive time.)
fn reject_repeats(parsed: &mut Parsed, indexes: &[usize]) {
    let mut first: HashMap<(u32, i64), usize> = HashMap::with_capacity(parsed.readings.len());
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    for (k, r) in parsed.readings.iter().enumerate() {
        match first.entry((r.metric, r.ts_us)) {
            Entry::Occupied(e) => repeats.push((k, *e.get())),
            Entry::Vacant(e) => {
                e.insert(indexes[k]);
            }
        }
    }
    drop(first);
    if repeats.is_empty() {
        return;
    }
    for &(k, of) in &repeats {
        let r = parsed.readings[k];
        let error = format!(
            "reading {of} has the same metric {} and ts {}: a series has one value per \
             timestamp (readings without ts take the receive time; give each its own ts)",
            parsed.metric_of(&r).unwrap_or_default(),
            rfc3339(r.ts_us)
        );
        parsed.rejected.push(Rejection {
            index: indexes[k],
            error,
        });
    }
    let mut drop_at = repeats.iter().map(|&(k, _)| k).peekable();
    let mut k = 0;
    parsed.readings.retain(|_| {
        let keep = drop_at.next_if_eq(&k).is_none();
        k += 1;
        keep
    });
    parsed.rejected.sort_by_key(|r| r.index);
}

/// Why the top level of a body could not be read: not JSON at all (which the non-finite repair
/// may fix), or JSON of the wrong shape.
enum TopLevel {
    Syntax(serde_json::Error),
    Shape(BodyError),
}

/// The readings of a body, each still raw: one pass over the body, whose syntax errors and
/// shape errors are told apart by serde's error category.
fn top_level_readings(text: &str) -> Result<Vec<&RawValue>, TopLevel> {
    const SHAPE: &str = "expected {\"readings\":[…]}, an array of readings, or one reading object";
    let wrong =
        |detail: String| TopLevel::Shape(BodyError::WrongShape(format!("{detail}; {SHAPE}")));
    let classify = |e: serde_json::Error, what: &str| match e.classify() {
        serde_json::error::Category::Data => wrong(format!("{what} ({e})")),
        _ => TopLevel::Syntax(e),
    };
    match text.trim_start().as_bytes().first() {
        Some(b'[') => serde_json::from_str::<Vec<&RawValue>>(text)
            .map_err(|e| classify(e, "the array could not be read")),
        Some(b'{') => {
            #[derive(Deserialize)]
            struct Envelope<'a> {
                #[serde(default, borrow, deserialize_with = "present_list")]
                readings: Option<Vec<&'a RawValue>>,
                #[serde(default, borrow, deserialize_with = "present")]
                metric: Option<&'a RawValue>,
                #[serde(default, borrow, deserialize_with = "present")]
                value: Option<&'a RawValue>,
            }
            let envelope: Envelope = serde_json::from_str(text).map_err(|e| {
                classify(
                    e,
                    "the object could not be read (\"readings\" must be an array)",
                )
            })?;
            // Both an envelope and a reading: which one was meant is a guess, so neither is.
            if envelope.readings.is_some()
                && (envelope.metric.is_some() || envelope.value.is_some())
            {
                return Err(wrong(
                    "an object with \"readings\" must not also have \"metric\" or \"value\""
                        .to_owned(),
                ));
            }
            match envelope.readings {
                Some(list) => Ok(list),
                None => Ok(vec![
                    serde_json::from_str::<&RawValue>(text).map_err(TopLevel::Syntax)?,
                ]),
            }
        }
        _ => match serde_json::from_str::<&RawValue>(text) {
            Ok(_) => Err(wrong("the body is a JSON scalar".to_owned())),
            Err(e) => Err(TopLevel::Syntax(e)),
        },
    }
}

fn present_list<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<&'de RawValue>>, D::Error> {
    <Vec<&'de RawValue>>::deserialize(d).map(Some)
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

/// A reading's metric name (borrowed from the body when it has no escapes), time and value.
fn parse_reading<'a>(
    raw: &'a RawValue,
    now_us: i64,
    limits: &Limits,
) -> Result<(Cow<'a, str>, i64, f64), String> {
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
    let ts_us = parse_ts(r.ts, now_us, limits)?;
    Ok((metric, ts_us, value))
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

fn parse_metric(raw: Option<&RawValue>) -> Result<Cow<'_, str>, String> {
    let raw = raw.ok_or("metric is required")?;
    let text = raw.get();
    let not_string = || format!("metric must be a string, got {}", kind_of(text));
    // A JSON string without escapes is its own text between the quotes: no copy needed.
    let name: Cow<str> = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Cow::Borrowed(inner),
        Some(_) => Cow::Owned(serde_json::from_str::<String>(text).map_err(|_| not_string())?),
        None => return Err(not_string()),
    };
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

/// The reading's time in epoch µs: RFC 3339 with an offset (to the microsecond, what
/// PostgreSQL stores; finer digits are dropped), integer epoch milliseconds, or the receive time
/// when absent.
fn parse_ts(raw: Option<&RawValue>, now_us: i64, limits: &Limits) -> Result<i64, String> {
    let Some(raw) = raw.filter(|r| r.get() != "null") else {
        return Ok(now_us);
    };
    let text = raw.get();
    let ts_us = match text.as_bytes().first() {
        Some(b'"') => {
            let s: String = serde_json::from_str(text).unwrap_or_default();
            DateTime::parse_from_rfc3339(&s)
                .map_err(|_| {
                    format!(
                        "ts {} is not RFC 3339 with an offset (e.g. \"2026-12-03T10:00:00Z\") nor integer epoch milliseconds",
                        shorten(text)
                    )
                })?
                .timestamp_micros()
        }
        Some(b'-' | b'0'..=b'9') => {
            let ms: i64 = text.parse().map_err(|_| {
                format!(
                    "ts {} must be an integer of epoch milliseconds",
                    shorten(text)
                )
            })?;
            let us = ms
                .checked_mul(1000)
                .ok_or_else(|| format!("ts {ms} is out of range as epoch milliseconds"))?;
            if us < limits.horizon_us
                && let Some(as_seconds) = us.checked_mul(1000)
                && as_seconds >= limits.horizon_us
                && as_seconds <= now_us.saturating_add(limits.future_skew_us)
            {
                return Err(format!(
                    "ts {ms} is read as epoch milliseconds, which is {} in 1970, before the horizon {}; \
                     it looks like epoch seconds: send milliseconds ({})",
                    rfc3339(us),
                    rfc3339(limits.horizon_us),
                    as_seconds / 1000
                ));
            }
            us
        }
        _ => {
            return Err(format!(
                "ts must be an RFC 3339 string or integer epoch milliseconds, got {}",
                kind_of(text)
            ));
        }
    };
    if ts_us > now_us.saturating_add(limits.future_skew_us) {
        return Err(format!(
            "ts {} is in the future: {:.1} s ahead of the gateway's clock, more than the allowed skew of {} s",
            rfc3339(ts_us),
            (ts_us - now_us) as f64 / 1e6,
            limits.future_skew_us / 1_000_000
        ));
    }
    if ts_us < limits.horizon_us {
        return Err(format!(
            "ts {} is before the horizon {}",
            rfc3339(ts_us),
            rfc3339(limits.horizon_us)
        ));
    }
    Ok(ts_us)
}

/// Formats epoch µs as RFC 3339 UTC, for messages and API answers.
pub fn rfc3339(us: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| format!("{us} µs"))
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
