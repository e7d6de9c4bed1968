//! pion/ice's ping-pong flow through the library API: two agents hosted on one engine
//! (two shards), signalling in process over channels (what `icering ping` does over HTTP),
//! candidates trickled as they are gathered, the controlling side dials, the controlled
//! side accepts, then `ping N` / `pong N` three times each way.
//!
//! ```text
//! cargo run --example api_ping_pong          # dedicated sockets on both sides
//! cargo run --example api_ping_pong -- --mux # the controlled side on the shared mux port
//! ```

use std::time::Duration;

use bytes::Bytes;
use icering::{Agent, AgentEvent, AgentOptions, Candidate, Config, Conn, Engine};
use tokio::sync::mpsc;

/// What one side posts to the other (pion's `/remoteAuth` and `/remoteCandidate`).
#[derive(Debug)]
enum Signal {
    Auth(String, String),
    Candidate(Candidate),
}

async fn side(
    name: &'static str,
    controlling: bool,
    mut agent: Agent,
    to_peer: mpsc::UnboundedSender<Signal>,
    mut from_peer: mpsc::UnboundedReceiver<Signal>,
) -> Result<(), icering::ApiError> {
    let (ufrag, pwd) = agent.local_credentials();
    let _ = to_peer.send(Signal::Auth(ufrag, pwd));
    // Print and post every local candidate as it is gathered (pion: OnCandidate).
    let mut events = agent.take_events().expect("app agent");
    let poster = to_peer.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            match e {
                AgentEvent::Candidate(Some(c)) => {
                    println!("{name}: local candidate {}", c.to_sdp());
                    let _ = poster.send(Signal::Candidate(*c));
                }
                AgentEvent::Candidate(None) => println!("{name}: gathering complete"),
                AgentEvent::State(s) => println!("{name}: connection state {s:?}"),
                AgentEvent::SelectedPair { local, remote } => {
                    println!("{name}: selected {} -> {}", local.addr, remote.addr)
                }
            }
        }
    });
    agent.gather_candidates()?;
    // Credentials and candidates in any order; remote candidates keep trickling in while
    // dial/accept wait.
    let (remote_ufrag, remote_pwd) = loop {
        match from_peer.recv().await {
            Some(Signal::Auth(u, p)) => break (u, p),
            Some(Signal::Candidate(c)) => agent.add_remote_candidate(c)?,
            None => return Err(icering::ApiError::Closed),
        }
    };
    let agent = std::sync::Arc::new(agent);
    let trickle = agent.clone();
    tokio::spawn(async move {
        while let Some(Signal::Candidate(c)) = from_peer.recv().await {
            let _ = trickle.add_remote_candidate(c);
        }
    });
    let conn = if controlling {
        agent.dial(&remote_ufrag, &remote_pwd).await?
    } else {
        agent.accept(&remote_ufrag, &remote_pwd).await?
    };
    talk(name, if controlling { "ping" } else { "pong" }, conn).await?;
    agent.close();
    Ok(())
}

async fn talk(name: &str, word: &str, mut conn: Conn) -> Result<(), icering::ApiError> {
    for i in 1..=3 {
        conn.send(Bytes::from(format!("{word} {i}"))).await?;
        let got = tokio::time::timeout(Duration::from_secs(5), conn.recv())
            .await
            .map_err(|_| icering::ApiError::Failed)??;
        println!("{name}: received {:?}", String::from_utf8_lossy(&got));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = conn.stats().await?;
    println!(
        "{name}: {} datagrams sent, {} received, rtt {:?}, pair {:?}",
        s.packets_sent, s.packets_received, s.rtt, s.selected
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mux = std::env::args().any(|a| a == "--mux");
    let mut config = Config::embedded();
    config.server.listen.clear();
    config.server.shards = 2;
    config.ice.listen = vec!["127.0.0.1:0".parse()?];
    let engine = Engine::start(&config)?;

    let opts = AgentOptions::default().loopback_only();
    let a = engine.agent(opts.clone())?;
    let b = engine.agent(opts.with_mux(mux))?;
    let (a_tx, b_rx) = mpsc::unbounded_channel();
    let (b_tx, a_rx) = mpsc::unbounded_channel();
    let (ra, rb) = tokio::join!(
        side("controlling", true, a, a_tx, a_rx),
        side("controlled", false, b, b_tx, b_rx)
    );
    ra?;
    rb?;
    println!("{:?}", engine.stats());
    engine.shutdown()?;
    Ok(())
}
