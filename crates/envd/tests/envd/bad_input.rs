//! Malformed input gets an error frame and a closed connection; envd keeps serving.

use hangar_protocol::envd::MAX_FRAME;

use crate::support::{Envd, error_code};

async fn assert_refused(envd: &Envd, bytes: &[u8], code: &str) {
    let frames = envd.raw(bytes);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(error_code(&frames[0]), code, "{frames:?}");
    envd.client.health().await.unwrap();
}

#[tokio::test]
async fn malformed_json_is_a_bad_request() {
    let envd = Envd::start().await;
    assert_refused(&envd, b"{not json\n", "bad_request").await;
    assert_refused(&envd, b"\n", "bad_request").await;
    assert_refused(&envd, b"\xff\xfe\n", "bad_request").await;
}

#[tokio::test]
async fn unknown_op_and_unknown_field_are_bad_requests() {
    let envd = Envd::start().await;
    assert_refused(&envd, b"{\"op\":\"format_disk\"}\n", "bad_request").await;
    assert_refused(
        &envd,
        b"{\"op\":\"stat\",\"path\":\"/\",\"x\":1}\n",
        "bad_request",
    )
    .await;
    assert_refused(
        &envd,
        b"{\"op\":\"exec\",\"argv\":[\"true\"],\"bogus\":1}\n",
        "bad_request",
    )
    .await;
}

#[tokio::test]
async fn invalid_base64_is_a_bad_request() {
    let envd = Envd::start().await;
    assert_refused(
        &envd,
        b"{\"op\":\"write_file\",\"path\":\"/f\",\"data\":\"!!!\"}\n",
        "bad_request",
    )
    .await;
    assert!(!envd.root.join("f").exists());
}

#[tokio::test]
async fn exec_needs_exactly_one_non_empty_command() {
    let envd = Envd::start().await;
    assert_refused(
        &envd,
        b"{\"op\":\"exec\",\"argv\":[\"true\"],\"shell\":\"true\"}\n",
        "bad_request",
    )
    .await;
    assert_refused(&envd, b"{\"op\":\"exec\"}\n", "bad_request").await;
    assert_refused(&envd, b"{\"op\":\"exec\",\"argv\":[]}\n", "bad_request").await;
    assert_refused(&envd, b"{\"op\":\"exec\",\"argv\":[\"\"]}\n", "bad_request").await;
}

#[tokio::test]
async fn a_line_longer_than_max_frame_is_too_large() {
    let envd = Envd::start().await;
    let mut huge = b"{\"op\":\"write_file\",\"path\":\"/f\",\"data\":\"".to_vec();
    huge.resize(MAX_FRAME + 1024, b'A');
    assert_refused(&envd, &huge, "too_large").await;
    let peak = envd.peak_rss_kib();
    assert!(peak < 64 * 1024, "envd peaked at {peak} KiB");
}

#[tokio::test]
async fn a_silent_connection_is_refused_after_the_request_timeout() {
    let envd = Envd::start_with(&["--request-timeout-ms", "300"]).await;
    assert_refused(&envd, b"", "bad_request").await;
}

#[tokio::test]
async fn malformed_exec_input_kills_the_process_and_closes() {
    let envd = Envd::start().await;
    let frames = envd.raw(b"{\"op\":\"exec\",\"argv\":[\"sleep\",\"60\"]}\n{\"type\":\"dance\"}\n");
    assert_eq!(frames[0]["type"], "started");
    assert_eq!(error_code(&frames[1]), "bad_request");
    let pid = frames[0]["pid"].as_u64().unwrap() as u32;
    assert!(crate::support::gone_within(
        pid,
        std::time::Duration::from_secs(3)
    ));
    envd.client.health().await.unwrap();
}

#[tokio::test]
async fn a_final_line_without_newline_is_still_a_request() {
    let envd = Envd::start().await;
    let mut s = std::os::unix::net::UnixStream::connect(&envd.socket).unwrap();
    use std::io::{Read, Write};
    s.write_all(b"{\"op\":\"health\"}").unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["type"], "health");
}
