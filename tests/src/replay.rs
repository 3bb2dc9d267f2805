//! The UCI Occupancy Detection files (see `data/README.md`) as hub readings.
//!
//! Quirks handled here, from the data's README: the header names 7 columns but rows have 8 (an
//! unnamed row number comes first); the date is quoted in two files and bare in the third; dates
//! carry no offset (local office time, which we state as UTC+01:00, CET in February).

use std::path::Path;

/// The files in name order, which is how they are replayed (not time order: "test" precedes
/// "training" in time).
pub const FILES: [&str; 3] = [
    "occupancy_datatest.csv",
    "occupancy_datatest2.csv",
    "occupancy_datatraining.csv",
];

/// Column → metric name, in file order after the row number and date.
pub const METRICS: [&str; 6] = [
    "temperature",
    "humidity",
    "light",
    "co2",
    "humidity_ratio",
    "occupancy",
];

/// One reading as JSON text, with the value kept exactly as written in the file.
#[derive(Debug, Clone)]
pub struct RawReading {
    pub json: String,
    pub valid_number: bool,
}

#[derive(Debug, Default)]
pub struct FileReadings {
    pub name: String,
    pub rows: usize,
    pub readings: Vec<RawReading>,
    /// Lines that could not be read as a row at all (reported, not sent).
    pub bad_lines: Vec<(usize, String)>,
}

fn unquote(s: &str) -> &str {
    s.trim().trim_matches('"')
}

/// Parses one file; `offset` like `+01:00`.
pub fn read_file(path: &Path, offset: &str) -> std::io::Result<FileReadings> {
    let text = std::fs::read_to_string(path)?;
    let mut out = FileReadings {
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        ..Default::default()
    };
    for (lineno, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 8 {
            out.bad_lines
                .push((lineno + 1, format!("{} fields, expected 8", fields.len())));
            continue;
        }
        let date = unquote(fields[1]);
        let Some((d, t)) = date.split_once(' ') else {
            out.bad_lines.push((
                lineno + 1,
                format!("date {date:?} is not YYYY-MM-DD HH:MM:SS"),
            ));
            continue;
        };
        let ts = format!("{d}T{t}{offset}");
        out.rows += 1;
        for (metric, raw) in METRICS.iter().zip(&fields[2..]) {
            let raw = unquote(raw);
            let valid_number = raw.parse::<f64>().is_ok_and(f64::is_finite);
            let value = if valid_number {
                raw.to_owned()
            } else {
                serde_json::Value::String(raw.to_owned()).to_string()
            };
            out.readings.push(RawReading {
                json: format!(r#"{{"metric":"{metric}","value":{value},"ts":"{ts}"}}"#),
                valid_number,
            });
        }
    }
    Ok(out)
}

/// Every file of the data set, in name order.
pub fn read_all(dir: &Path, offset: &str) -> std::io::Result<Vec<FileReadings>> {
    FILES
        .iter()
        .map(|f| read_file(&dir.join(f), offset))
        .collect()
}

/// A JSON body `{"readings":[…]}` for a slice of readings.
pub fn body(readings: &[RawReading]) -> String {
    let mut s =
        String::with_capacity(readings.iter().map(|r| r.json.len() + 1).sum::<usize>() + 16);
    s.push_str(r#"{"readings":["#);
    for (i, r) in readings.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&r.json);
    }
    s.push_str("]}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_files_parse_with_their_quirks() {
        let files = read_all(&crate::workspace_root().join("data"), "+01:00").unwrap();
        let rows: Vec<usize> = files.iter().map(|f| f.rows).collect();
        assert_eq!(
            rows,
            vec![2665, 9752, 8143],
            "row counts from data/README.md"
        );
        assert!(files.iter().all(|f| f.bad_lines.is_empty()));
        let first = &files[0].readings[0].json;
        assert_eq!(
            first,
            r#"{"metric":"temperature","value":23.7,"ts":"2015-02-02T14:19:00+01:00"}"#
        );
        // The unquoted-date file and long decimals survive as written.
        assert!(
            files[1].readings[0]
                .json
                .contains(r#""ts":"2015-02-11T14:48:00+01:00""#)
        );
        assert!(files[0].readings[4].json.contains("0.00476416302416414"));
    }
}
