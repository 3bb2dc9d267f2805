//! The ingest rules of docs/api.md (`POST /ingest`), one table row per rule.

use super::*;

/// 2026-12-03T10:00:00Z, the receive time in every test, in the epoch milliseconds bodies use
/// and in the microseconds readings carry.
const NOW_MS: i64 = 1_796_292_000_000;
const NOW: i64 = NOW_MS * 1000;

fn run(body: &str) -> Result<Parsed, BodyError> {
    parse(body.as_bytes(), NOW, &Limits::default())
}

fn one_error(reading: &str) -> String {
    let parsed = run(&format!("[{reading}]")).unwrap();
    assert!(
        parsed.readings.is_empty(),
        "{reading} was accepted: {:?}",
        parsed.readings
    );
    assert_eq!(parsed.rejected.len(), 1);
    parsed.rejected[0].error.clone()
}

/// One accepted reading with its metric's name.
struct Got {
    metric: String,
    ts_us: i64,
    value: f64,
}

fn one_ok(reading: &str) -> Got {
    let parsed = run(&format!("[{reading}]")).unwrap();
    assert!(
        parsed.rejected.is_empty(),
        "{reading} rejected: {:?}",
        parsed.rejected
    );
    let r = parsed.readings[0];
    Got {
        metric: parsed.metric_of(&r).unwrap().to_owned(),
        ts_us: r.ts_us,
        value: r.value,
    }
}

#[test]
fn the_three_body_shapes_are_accepted() {
    let r = r#"{"metric":"temperature","value":21.5,"ts":"2026-12-03T09:00:00Z"}"#;
    for body in [
        format!(r#"{{"readings":[{r}]}}"#),
        format!("[{r}]"),
        r.to_owned(),
    ] {
        let parsed = run(&body).unwrap();
        assert_eq!(parsed.readings.len(), 1, "{body}");
        assert_eq!(parsed.metric_of(&parsed.readings[0]), Some("temperature"));
        assert_eq!(parsed.readings[0].value, 21.5);
        assert_eq!(parsed.readings[0].ts_us, NOW - 3_600_000_000);
    }
}

#[test]
fn whole_body_faults_are_errors_of_the_body() {
    type Check = fn(&BodyError) -> bool;
    let cases: &[(&str, Check)] = &[
        ("", |e| matches!(e, BodyError::Empty)),
        ("   \n", |e| matches!(e, BodyError::Empty)),
        ("{", |e| matches!(e, BodyError::NotJson(_))),
        ("nan", |e| matches!(e, BodyError::NotJson(_))),
        ("hello", |e| matches!(e, BodyError::NotJson(_))),
        ("[1,2", |e| matches!(e, BodyError::NotJson(_))),
        ("42", |e| matches!(e, BodyError::WrongShape(_))),
        ("\"x\"", |e| matches!(e, BodyError::WrongShape(_))),
        ("null", |e| matches!(e, BodyError::WrongShape(_))),
        (r#"{"readings":5}"#, |e| {
            matches!(e, BodyError::WrongShape(_))
        }),
        (r#"{"readings":null}"#, |e| {
            matches!(e, BodyError::WrongShape(_))
        }),
        (
            r#"{"readings":[],"metric":"b","value":2}"#,
            |e| matches!(e, BodyError::WrongShape(m) if m.contains("must not also")),
        ),
    ];
    for (body, ok) in cases {
        let err = run(body).unwrap_err();
        assert!(ok(&err), "{body:?} gave {err:?}");
    }
    // Multi-byte characters where JSON allows none (a byte-order mark, a stray letter after a
    // value) are a body that is not JSON, not a panic.
    for body in [
        "\u{feff}{\"metric\":\"bom\",\"value\":1}",
        r#"{"metric":"x","value":1é}"#,
        "é",
        "[NaN, ü]",
        "ü NaN",
    ] {
        assert!(
            matches!(run(body), Err(BodyError::NotJson(_))),
            "{body:?} gave {:?}",
            run(body)
        );
    }
    assert!(matches!(
        parse(&[0xff, 0xfe], NOW, &Limits::default()),
        Err(BodyError::NotJson(_))
    ));
}

#[test]
fn an_empty_array_is_a_valid_body_with_nothing_in_it() {
    assert_eq!(run("[]").unwrap(), Parsed::default());
    assert_eq!(run(r#"{"readings":[]}"#).unwrap(), Parsed::default());
}

#[test]
fn size_limits_are_checked_with_the_limit_in_the_message() {
    let limits = Limits {
        max_body_bytes: 100,
        max_readings: 2,
        ..Limits::default()
    };
    let big = format!("[{}]", " ".repeat(200));
    let err = parse(big.as_bytes(), NOW, &limits).unwrap_err();
    assert!(err.to_string().contains("100 bytes"), "{err}");
    let three = r#"[{"metric":"a","value":1},{"metric":"a","value":2},{"metric":"a","value":3}]"#;
    let err = parse(three.as_bytes(), NOW, &limits).unwrap_err();
    assert_eq!(err, BodyError::TooManyReadings { count: 3, limit: 2 });
    assert!(err.to_string().contains("limit of 2"));
}

#[test]
fn metric_names_follow_the_charset_and_length_rules() {
    for ok in ["t", "temperature", "a.b:c/d-e_f", "A9", &"m".repeat(128)] {
        assert_eq!(
            one_ok(&format!(r#"{{"metric":"{ok}","value":1}}"#)).metric,
            ok
        );
    }
    for (bad, needle) in [
        (r#""""#, "1-128"),
        (&format!(r#""{}""#, "m".repeat(129)), "1-128"),
        (r#""a b""#, "may only contain"),
        (r#""temp°""#, "may only contain"),
        (r#""a\nb""#, "may only contain"),
        ("5", "must be a string"),
        ("null", "must be a string"),
    ] {
        let err = one_error(&format!(r#"{{"metric":{bad},"value":1}}"#));
        assert!(err.contains(needle), "{bad}: {err}");
    }
    assert!(one_error(r#"{"value":1}"#).contains("metric is required"));
}

#[test]
fn values_must_be_finite_json_numbers() {
    for (text, expected) in [
        ("0", 0.0_f64),
        ("-0.5", -0.5),
        ("1e300", 1e300),
        ("-1e300", -1e300),
        ("24.3566666666667", 24.3566666666667),
        ("0.00476416302416414", 0.00476416302416414),
        ("12345678901234567890", 12345678901234567890.0),
    ] {
        let r = one_ok(&format!(r#"{{"metric":"m","value":{text}}}"#));
        assert_eq!(r.value.to_bits(), expected.to_bits(), "{text}");
    }
    for (text, needle) in [
        (r#""37.8""#, "not a string"),
        (r#""NaN""#, "not finite"),
        (r#""Infinity""#, "not finite"),
        (r#""-inf""#, "not finite"),
        ("null", "got null"),
        ("true", "got a boolean"),
        ("[1]", "got an array"),
        (r#"{"v":1}"#, "got an object"),
        ("1e400", "outside the range"),
        ("-1e999", "outside the range"),
    ] {
        let err = one_error(&format!(r#"{{"metric":"m","value":{text}}}"#));
        assert!(err.contains(needle), "{text}: {err}");
    }
    assert!(one_error(r#"{"metric":"m"}"#).contains("value is required"));
}

#[test]
fn bare_non_finite_tokens_reject_only_their_reading() {
    // Case C3: a bare NaN token in the JSON sinks neither the batch nor its neighbours.
    let body = r#"[{"metric":"m","value":NaN},{"metric":"m","value":1},{"metric":"m","value":-Infinity},{"metric":"NaN","value":Infinity}]"#;
    let parsed = run(body).unwrap();
    assert_eq!(parsed.readings.len(), 1);
    assert_eq!(parsed.readings[0].value, 1.0);
    let idx: Vec<usize> = parsed.rejected.iter().map(|r| r.index).collect();
    assert_eq!(idx, vec![0, 2, 3]);
    assert!(
        parsed
            .rejected
            .iter()
            .all(|r| r.error.contains("not finite")),
        "{:?}",
        parsed.rejected
    );
    // A token inside a string is left alone, and a truly broken body is still an error.
    assert!(matches!(
        run(r#"[{"metric":"m","value":NaNa}]"#),
        Err(BodyError::NotJson(_))
    ));
}

#[test]
fn timestamps_are_rfc3339_with_offset_or_epoch_milliseconds() {
    for (ts, expected) in [
        (r#""2026-12-03T10:00:00Z""#, NOW),
        (r#""2026-12-03T11:00:00+01:00""#, NOW),
        // Microseconds are kept (PostgreSQL's resolution); finer digits are dropped.
        (r#""2026-12-03T10:00:00.123456Z""#, NOW + 123_456),
        (r#""2026-12-03T10:00:00.000001Z""#, NOW + 1),
        (r#""2026-12-03T10:00:00.123456789Z""#, NOW + 123_456),
        (r#""2015-02-02T14:19:00+01:00""#, 1_422_883_140_000_000),
        // A leap second is the first instant of the next minute, as PostgreSQL reads it.
        (r#""2016-12-31T23:59:60Z""#, 1_483_228_800_000_000),
        ("1422883140000", 1_422_883_140_000_000),
        ("946684800000", DEFAULT_HORIZON_US),
        ("null", NOW),
    ] {
        let r = one_ok(&format!(r#"{{"metric":"m","value":1,"ts":{ts}}}"#));
        assert_eq!(r.ts_us, expected, "{ts}");
    }
    assert_eq!(
        one_ok(r#"{"metric":"m","value":1}"#).ts_us,
        NOW,
        "absent ts is the receive time"
    );
    for (ts, needle) in [
        (r#""2026-12-03T10:00:00""#, "RFC 3339 with an offset"),
        (r#""2026-12-03""#, "RFC 3339"),
        (r#""yesterday""#, "RFC 3339"),
        ("1.5e12", "integer of epoch milliseconds"),
        ("1422883140000.5", "integer of epoch milliseconds"),
        ("99999999999999999999", "integer of epoch milliseconds"),
        ("9223372036854775807", "out of range"),
        ("-9223372036854775808", "out of range"),
        ("true", "got a boolean"),
        ("-1", "before the horizon"),
        (r#""1999-12-31T23:59:59Z""#, "before the horizon"),
    ] {
        let err = one_error(&format!(r#"{{"metric":"m","value":1,"ts":{ts}}}"#));
        assert!(err.contains(needle), "{ts}: {err}");
    }
}

#[test]
fn epoch_seconds_are_rejected_with_a_message_that_says_so() {
    // Case C1: the other readings of the batch are still accepted.
    let parsed = run(
        r#"[{"metric":"t","value":1,"ts":1559206140},{"metric":"t","value":2,"ts":1559206140000}]"#,
    )
    .unwrap();
    assert_eq!(parsed.readings.len(), 1);
    assert_eq!(parsed.readings[0].ts_us, 1_559_206_140_000_000);
    let err = &parsed.rejected[0];
    assert_eq!(err.index, 0);
    assert!(
        err.error.contains("milliseconds") && err.error.contains("1970"),
        "{}",
        err.error
    );
    assert!(
        err.error.contains("epoch seconds") && err.error.contains("1559206140000"),
        "{}",
        err.error
    );
}

#[test]
fn the_future_is_bounded_by_the_configured_skew() {
    // Case C2.
    let err = one_error(&format!(
        r#"{{"metric":"m","value":1,"ts":{}}}"#,
        NOW_MS + 3_600_000
    ));
    assert!(
        err.contains("in the future") && err.contains("3600.0 s"),
        "{err}"
    );
    one_ok(&format!(
        r#"{{"metric":"m","value":1,"ts":{}}}"#,
        NOW_MS + 300_000
    ));
    one_error(&format!(
        r#"{{"metric":"m","value":1,"ts":{}}}"#,
        NOW_MS + 300_001
    ));
    let limits = Limits {
        future_skew_us: 0,
        ..Limits::default()
    };
    let body = format!(r#"{{"metric":"m","value":1,"ts":{}}}"#, NOW_MS + 1);
    assert_eq!(
        parse(body.as_bytes(), NOW, &limits).unwrap().rejected.len(),
        1
    );
}

#[test]
fn non_object_readings_and_duplicate_fields_are_rejected_by_index() {
    let parsed =
        run(r#"[1,"x",null,[],{"metric":"m","value":1,"value":2},{"metric":"ok","value":3}]"#)
            .unwrap();
    assert_eq!(parsed.readings.len(), 1);
    assert_eq!(
        parsed.rejected.iter().map(|r| r.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert!(parsed.rejected[0].error.contains("JSON object"));
    assert!(
        parsed.rejected[4].error.contains("duplicate"),
        "{}",
        parsed.rejected[4].error
    );
}

#[test]
fn unknown_fields_are_ignored_and_batch_order_is_kept() {
    // Case C9: readings keep their body order here; storage and rules order them by time.
    let parsed = run(
        r#"{"readings":[{"metric":"m","value":4,"ts":1700000003000,"unit":"C"},{"metric":"m","value":2,"ts":1700000001000},{"metric":"m","value":3,"ts":1700000002000},{"metric":"m","value":1,"ts":1700000000000}],"device":"x"}"#,
    )
    .unwrap();
    let values: Vec<f64> = parsed.readings.iter().map(|r| r.value).collect();
    assert_eq!(values, vec![4.0, 2.0, 3.0, 1.0]);
}

#[test]
fn error_messages_do_not_echo_unbounded_input() {
    let long = "x".repeat(10_000);
    let err = one_error(&format!(r#"{{"metric":"m","value":"{long}"}}"#));
    assert!(err.len() < 300, "{} bytes", err.len());
}

#[test]
fn a_full_sized_batch_just_under_the_limits_is_accepted() {
    // Case C10, the parser's half: 10 000 readings in under 1 MiB are all accepted.
    let readings: Vec<String> = (0..10_000)
        .map(|i| {
            format!(
                r#"{{"metric":"m","value":{i},"ts":{}}}"#,
                1_700_000_000_000i64 + i
            )
        })
        .collect();
    let body = format!("[{}]", readings.join(","));
    assert!(body.len() < 1024 * 1024);
    let parsed = run(&body).unwrap();
    assert_eq!(parsed.readings.len(), 10_000);
}

/// No input panics the parser: every prefix, cut at every byte, of bodies that mix multi-byte
/// characters with the tokens the non-finite repair looks for.
#[test]
fn no_prefix_of_a_body_with_multibyte_characters_panics() {
    let bodies = [
        r#"{"readings":[{"metric":"é","value":NaN,"ts":"2026-12-03T09:00:00Z"},{"metric":"m","value":-Infinity}]}"#,
        "\u{feff}[{\"metric\":\"m\",\"value\":1} ü NaN, \"ß\\\"\", Infinity]",
        "[\"日本語\", NaN, \"\u{1F600}\" Infinity]",
    ];
    for body in bodies {
        for cut in 0..=body.len() {
            let _ = parse(&body.as_bytes()[..cut], NOW, &Limits::default());
        }
    }
}

/// Two readings of one metric at one time in one body: the first is accepted, the repeat is
/// refused by index naming the first, so that `accepted` counts only what will be stored.
#[test]
fn a_repeated_metric_and_time_in_one_body_is_refused_naming_the_first() {
    // Without ts, all three take the receive time; with ts, one repeat among distinct ones;
    // a leap second lands on the next minute's first instant; sub-microsecond digits collapse.
    let parsed = run(
        r#"[{"metric":"a","value":1},{"metric":"a","value":2},{"metric":"b","value":3},
            {"metric":"a","value":4},{"metric":"c","value":5,"ts":"2016-12-31T23:59:60Z"},
            {"metric":"c","value":6,"ts":"2017-01-01T00:00:00Z"},
            {"metric":"d","value":7,"ts":"2026-12-03T09:00:00.0000011Z"},
            {"metric":"d","value":8,"ts":"2026-12-03T09:00:00.0000012Z"},
            {"metric":"bad","value":"x"},{"metric":"e","value":9,"ts":1}]"#,
    )
    .unwrap();
    let values: Vec<f64> = parsed.readings.iter().map(|r| r.value).collect();
    assert_eq!(values, vec![1.0, 3.0, 5.0, 7.0]);
    let rejected: Vec<usize> = parsed.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, vec![1, 3, 5, 7, 8, 9], "{:?}", parsed.rejected);
    assert!(
        parsed.rejected[0].error.contains("reading 0")
            && parsed.rejected[0].error.contains("without ts"),
        "{}",
        parsed.rejected[0].error
    );
    assert!(
        parsed.rejected[2].error.contains("reading 4"),
        "{}",
        parsed.rejected[2].error
    );
    assert!(
        parsed.rejected[3].error.contains("reading 6"),
        "{}",
        parsed.rejected[3].error
    );
    // The same metric at the same time in two different bodies is not this body's business
    // (storage keeps the first; see ARCHITECTURE.md), and distinct times are never merged.
    let two = run(
        r#"[{"metric":"a","value":1,"ts":"2026-12-03T09:00:00.000001Z"},
                      {"metric":"a","value":2,"ts":"2026-12-03T09:00:00.000002Z"}]"#,
    )
    .unwrap();
    assert_eq!(two.readings.len(), 2);
}

/// Readings name their metric by position in the parsed body's list of distinct names; the same
/// name written with JSON escapes is the same metric (and so its repeat at one time is caught).
#[test]
fn each_distinct_metric_is_listed_once_and_escapes_name_the_same_metric() {
    let parsed = run(r#"[
        {"metric":"a/b","value":1,"ts":"2026-12-03T09:00:00Z"},
        {"metric":"t","value":2,"ts":"2026-12-03T09:00:00Z"},
        {"metric":"a\/b","value":3,"ts":"2026-12-03T09:00:01Z"},
        {"metric":"\u0074","value":4,"ts":"2026-12-03T09:00:01Z"},
        {"metric":"a\u002fb","value":5,"ts":"2026-12-03T09:00:00Z"}]"#)
    .unwrap();
    assert_eq!(parsed.metrics, ["a/b", "t"]);
    let names: Vec<&str> = parsed
        .readings
        .iter()
        .map(|r| parsed.metric_of(r).unwrap())
        .collect();
    assert_eq!(names, ["a/b", "t", "a/b", "t"]);
    assert_eq!(parsed.rejected.len(), 1);
    assert_eq!(parsed.rejected[0].index, 4);
    assert!(
        parsed.rejected[0].error.contains("reading 0"),
        "{:?}",
        parsed.rejected
    );
}
