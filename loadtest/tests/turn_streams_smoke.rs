//! Smoke test of `icering-loadtest turn --transport tcp|tls` against icering's relay in
//! this process: every datagram comes back through the relay, none lost or malformed, over
//! plain TCP and over TLS (a CA and a certificate for 127.0.0.1 made here). Many frames
//! per stream per turn go through the server's write coalescing (one write, one TLS
//! record batch, per stream per turn).

use std::process::Command;

use icering::config::Config;
use icering::shard::Runtime;

/// A CA (PEM) and a server certificate and key it signed for 127.0.0.1, in files.
fn pki(dir: &std::path::Path) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap().pem();
    let path = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    (
        path("ca.pem", &ca_pem),
        path("cert.pem", &cert),
        path("key.pem", &key.serialize_pem()),
    )
}

#[test]
fn relayed_round_trips_over_tcp_and_tls_all_come_back() {
    let dir = std::env::temp_dir().join(format!("icering-loadtest-streams-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = pki(&dir);
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.tls_listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.tls_cert = Some(cert.into());
    c.server.tls_key = Some(key.into());
    c.server.shards = 1;
    c.turn.users = vec!["user:pass".into()];
    c.turn.allow_loopback_peers = true;
    c.turn.min_port = 48400;
    c.turn.max_port = 48499;
    let rt = Runtime::start(&c).expect("relay starts");
    let (tcp, tls) = (rt.local_addrs()[0], rt.tls_addrs()[0]);
    for (transport, target) in [("tcp", tcp), ("tls", tls)] {
        for extra in [&[][..], &["--indications"][..]] {
            let out = Command::new(env!("CARGO_BIN_EXE_icering-loadtest"))
                .args(["turn", "--target", &target.to_string()])
                .args(["--transport", transport, "--tls-ca", &ca])
                .args(["--allocations", "8", "--window", "8", "--duration", "0.5"])
                .args(["--json"])
                .args(extra)
                .output()
                .expect("run icering-loadtest");
            let stdout = String::from_utf8_lossy(&out.stdout);
            let what = format!("{transport} {extra:?}");
            assert!(
                out.status.success(),
                "{what}: exit {:?}\nstdout: {stdout}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            let r: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON report");
            assert!(r["answered"].as_u64().unwrap() > 100, "{what}: {r}");
            assert_eq!(r["answered"], r["sent"], "{what}: {r}");
            for zero in [
                "lost",
                "invalid",
                "late_or_duplicate",
                "flows_without_answer",
            ] {
                assert_eq!(r[zero], 0, "{what}: {zero}: {r}");
            }
        }
    }
    rt.shutdown().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
