//! Smoke test of `icering-loadtest ice pairs`: a few pairs on icering and on webrtc-ice,
//! in worker processes, must all connect and stay connected through a short hold.

use std::process::Command;

#[test]
fn a_few_pairs_connect_on_both_implementations() {
    let out = Command::new(env!("CARGO_BIN_EXE_icering-loadtest"))
        .args([
            "ice",
            "pairs",
            "--n",
            "24",
            "--procs",
            "2",
            "--concurrency",
            "8",
            "--hold",
            "0.5",
            "--baseline",
            "webrtc-ice",
            "--json",
        ])
        .output()
        .expect("run icering-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
    let reports = reports.as_array().expect("one report per implementation");
    assert_eq!(reports.len(), 2);
    for (r, name) in reports.iter().zip(["icering", "webrtc-ice"]) {
        assert_eq!(r["implementation"], name);
        assert_eq!(r["connected"], 24, "{r}");
        assert_eq!(r["failed"], 0, "{r}");
        assert_eq!(r["agents"], 48, "{r}");
        assert_eq!(r["alive_after_hold"], 24, "{r}");
        assert_eq!(r["procs"], 2);
        assert!(r["latency_ms_p50"].as_f64().unwrap() > 0.0, "{r}");
    }
}
