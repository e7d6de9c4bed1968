//! An independent TURN client: webrtc-rs's `turn` crate (its own STUN codec, its own
//! long-term credential handling, RFC 8656 channel numbers from 0x4000) against the relay.
//! It allocates, sends to a peer (CreatePermission, then ChannelBind in the background),
//! and receives the peer's replies through the relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use icering::config::Config;
use icering::shard::Runtime;
use tokio::net::UdpSocket;
use turn::client::{Client, ClientConfig};
use webrtc_util::Conn;

fn start() -> (Runtime, SocketAddr) {
    let mut c = Config::embedded();
    c.server.listen = vec!["127.0.0.1:0".parse().unwrap()];
    c.server.shards = 2;
    c.turn.users = vec!["webrtc:rs-pass".into()];
    c.turn.allow_loopback_peers = true;
    c.turn.min_port = 47000;
    c.turn.max_port = 47999;
    let rt = Runtime::start(&c).expect("runtime starts");
    let addr = rt.local_addrs()[0];
    (rt, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webrtc_rs_turn_client_allocates_and_relays_both_ways() {
    let (rt, server) = start();
    let conn = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let client = Client::new(ClientConfig {
        stun_serv_addr: server.to_string(),
        turn_serv_addr: server.to_string(),
        username: "webrtc".into(),
        password: "rs-pass".into(),
        realm: "icering".into(),
        software: String::new(),
        rto_in_ms: 0,
        conn: Arc::new(conn),
        vnet: None,
    })
    .await
    .unwrap();
    client.listen().await.unwrap();
    let mapped = client.send_binding_request().await.unwrap();
    assert!(mapped.ip().is_loopback());
    let relay = client
        .allocate()
        .await
        .expect("allocate with long-term credentials");
    let relay_addr = relay.local_addr().unwrap();
    assert!((47000..=47999).contains(&relay_addr.port()), "{relay_addr}");

    let peer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut buf = [0u8; 1500];
    // Several rounds: the first go as Send indications, later ones over the channel the
    // client binds in the background.
    for i in 0..20u8 {
        relay.send_to(&[i; 64], peer_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), peer.recv_from(&mut buf))
            .await
            .expect("peer receives")
            .unwrap();
        assert_eq!(from, relay_addr);
        assert_eq!(&buf[..n], &[i; 64]);
        peer.send_to(&[i ^ 0xFF; 32], relay_addr).await.unwrap();
        let (n, from) = tokio::time::timeout(Duration::from_secs(3), relay.recv_from(&mut buf))
            .await
            .expect("client receives through the relay")
            .unwrap();
        assert_eq!(from, peer_addr);
        assert_eq!(&buf[..n], &[i ^ 0xFF; 32]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.close().await.unwrap();
    client.close().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = rt.stats();
    assert_eq!(s.allocations_created, 1, "{s:?}");
    assert!(
        s.relayed_to_peer >= 20 && s.relayed_to_client >= 20,
        "{s:?}"
    );
    rt.shutdown().unwrap();
}
