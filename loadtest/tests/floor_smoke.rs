//! Smoke test of `icering-loadtest udp-floor`: every pair's six datagrams arrive, on both
//! io backends.

use std::process::Command;

#[test]
fn every_pair_exchanges_its_six_datagrams_on_both_backends() {
    for io in ["auto", "portable"] {
        let out = Command::new(env!("CARGO_BIN_EXE_icering-loadtest"))
            .args(["udp-floor", "--n", "200", "--concurrency", "16"])
            .args(["--io", io, "--json"])
            .output()
            .expect("run icering-loadtest");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{io}: exit {:?}\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
        assert_eq!(r["pairs"], 200, "{io}: {r}");
        assert_eq!(r["datagrams_received"], 1200, "{io}: {r}");
    }
}
