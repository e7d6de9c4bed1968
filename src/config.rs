//! Configuration: TOML with every key optional, an embedded default
//! (`configs/default.toml`), and errors that name the key and the reason.

use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

/// The embedded default configuration.
pub const DEFAULT_TOML: &str = include_str!("../configs/default.toml");

/// A configuration error: which key, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or type errors (toml names the key and line).
    #[error("config: {0}")]
    Parse(String),
    /// A value is out of range.
    #[error("config key `{key}`: {reason}")]
    Invalid {
        /// Dotted key path.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Which io backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum IoBackendChoice {
    /// Probe io_uring; fall back to portable.
    #[default]
    Auto,
    /// io_uring or fail.
    Uring,
    /// recvmmsg/sendmmsg with epoll.
    Portable,
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`.
    pub server: ServerSection,
    /// `[io]`.
    pub io: IoSection,
}

/// `[server]`: what to listen on and how many shards.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// UDP listen addresses.
    pub listen: Vec<SocketAddr>,
    /// Shards; 0 = one per available core.
    pub shards: usize,
    /// SOFTWARE attribute value ("" to omit).
    pub software: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: vec!["127.0.0.1:3478".parse().expect("literal")],
            shards: 0,
            software: "icering".into(),
        }
    }
}

/// `[io]`: backend and buffer sizing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IoSection {
    /// auto | uring | portable.
    pub backend: IoBackendChoice,
    /// Datagrams per batch.
    pub batch: usize,
    /// Bytes per receive buffer.
    pub buf_size: usize,
    /// Receive buffers per shard (power of two).
    pub buf_count: usize,
    /// Coalesce equal-size replies to one destination into UDP GSO sends.
    pub gso: bool,
}

impl Default for IoSection {
    fn default() -> Self {
        IoSection {
            backend: IoBackendChoice::Auto,
            batch: 64,
            buf_size: 2048,
            buf_count: 4096,
            gso: true,
        }
    }
}

impl Config {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let c: Config = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The embedded default.
    pub fn embedded() -> Self {
        Self::from_toml(DEFAULT_TOML).expect("the embedded default config is valid")
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Checks ranges that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.server.listen.is_empty() {
            return invalid("server.listen", "needs at least one address");
        }
        if self.server.shards > 1024 {
            return invalid("server.shards", "at most 1024");
        }
        if self.server.software.len() > 127 {
            return invalid("server.software", "at most 127 bytes (RFC 8489 §14.14)");
        }
        if !(1..=1024).contains(&self.io.batch) {
            return invalid("io.batch", "must be 1..=1024");
        }
        if !(576..=65536).contains(&self.io.buf_size) {
            return invalid("io.buf_size", "must be 576..=65536 bytes");
        }
        if !self.io.buf_count.is_power_of_two() || !(64..=32768).contains(&self.io.buf_count) {
            return invalid("io.buf_count", "must be a power of two in 64..=32768");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_loopback_only() {
        let c = Config::embedded();
        assert!(c.server.listen.iter().all(|a| a.ip().is_loopback()));
        assert_eq!(c.io.backend, IoBackendChoice::Auto);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::from_toml("[io]\nbuf_count = 1000\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("io.buf_count") && e.contains("power of two"),
            "{e}"
        );
        let e = Config::from_toml("[server]\nlisen = []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lisen"), "{e}");
        let e = Config::from_toml("[io]\nbackend = \"fast\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("fast") || e.contains("backend"), "{e}");
        let e = Config::from_toml("[server]\nlisten = [\"nope\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") || e.contains("address"), "{e}");
    }
}
