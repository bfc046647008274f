//! A typed handle on a real toxiproxy server (Shopify/toxiproxy v2.12.0): one proxy per
//! upstream, toxics added and removed through its HTTP API.
//!
//! The server runs on its own free loopback port and dies with its guard. A missing binary
//! fails the test naming the component, like every other server in this module.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Guard, free_port, require_binary, wait_until};

pub const TOXIPROXY_SERVER: &str = "/var/cache/fleetsnap/tools/toxiproxy-v2.12.0/toxiproxy-server";

/// Which direction a toxic acts on: `Upstream` is client → server (request bodies),
/// `Downstream` is server → client (responses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Upstream,
    Downstream,
}

impl Stream {
    fn as_str(self) -> &'static str {
        match self {
            Stream::Upstream => "upstream",
            Stream::Downstream => "downstream",
        }
    }
}

/// The toxics the fault tests use, with toxiproxy's attribute names and units.
#[derive(Debug, Clone, Copy)]
pub enum Toxic {
    /// Delay every chunk of data by `ms` (± `jitter_ms`).
    Latency { ms: u64, jitter_ms: u64 },
    /// Limit throughput to `kib_per_s` (toxiproxy's `rate` is in KB/s).
    Bandwidth { kib_per_s: u64 },
    /// Stop all data; with `ms == 0` the connection stays open and nothing ever arrives
    /// (a black hole), otherwise it is closed after `ms`.
    Timeout { ms: u64 },
    /// Close the connection with a TCP RST after `ms`.
    ResetPeer { ms: u64 },
    /// Close the connection once `bytes` have passed in this direction.
    LimitData { bytes: u64 },
}

impl Toxic {
    fn kind_and_attributes(&self) -> (&'static str, String) {
        match *self {
            Toxic::Latency { ms, jitter_ms } => (
                "latency",
                format!(r#"{{"latency":{ms},"jitter":{jitter_ms}}}"#),
            ),
            Toxic::Bandwidth { kib_per_s } => ("bandwidth", format!(r#"{{"rate":{kib_per_s}}}"#)),
            Toxic::Timeout { ms } => ("timeout", format!(r#"{{"timeout":{ms}}}"#)),
            Toxic::ResetPeer { ms } => ("reset_peer", format!(r#"{{"timeout":{ms}}}"#)),
            Toxic::LimitData { bytes } => ("limit_data", format!(r#"{{"bytes":{bytes}}}"#)),
        }
    }
}

pub struct Toxiproxy {
    _guard: Guard,
    _dir: tempfile::TempDir,
    api: String,
    agent: ureq::Agent,
}

/// One proxy: clients connect to `listen`, toxiproxy forwards to the upstream.
pub struct Proxy<'a> {
    server: &'a Toxiproxy,
    pub name: String,
    pub listen: SocketAddr,
}

impl Toxiproxy {
    pub fn start() -> Toxiproxy {
        let bin = require_binary(
            "toxiproxy",
            Path::new(TOXIPROXY_SERVER),
            "build it with tests/testenv/tools.sh toxiproxy",
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("toxiproxy.log");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-host", "127.0.0.1", "-port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start toxiproxy-server");
        let mut guard = Guard(child);
        let api = format!("http://127.0.0.1:{port}");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Removing a toxic waits until its links have passed on what they hold; after
            // MinIO was frozen that takes a while (measured: over 10 s once in CI).
            .timeout_global(Some(Duration::from_secs(90)))
            .build()
            .into();
        let version = format!("{api}/version");
        wait_until("toxiproxy", &mut guard.0, &log, || {
            agent
                .get(&version)
                .call()
                .is_ok_and(|r| r.status().as_u16() == 200)
        });
        Toxiproxy {
            _guard: guard,
            _dir: dir,
            api,
            agent,
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<String>) -> (u16, String) {
        let url = format!("{}{path}", self.api);
        let res = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(b.as_str()),
            ("DELETE", None) => self.agent.delete(&url).call(),
            ("GET", None) => self.agent.get(&url).call(),
            other => panic!("toxiproxy helper: unsupported request {other:?}"),
        };
        let mut resp = res.unwrap_or_else(|e| panic!("toxiproxy API {method} {path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (status, text)
    }

    /// A proxy on a fresh loopback port in front of `upstream` (`host:port`).
    pub fn proxy(&self, name: &str, upstream: &str) -> Proxy<'_> {
        // The port is picked here and released just before toxiproxy binds it; nothing else
        // on this machine hands out ports from the ephemeral range that quickly.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let body = format!(
            r#"{{"name":"{name}","listen":"{listen}","upstream":"{upstream}","enabled":true}}"#
        );
        let (status, text) = self.send("POST", "/proxies", Some(body));
        assert_eq!(status, 201, "creating toxiproxy proxy {name}: {text}");
        Proxy {
            server: self,
            name: name.to_string(),
            listen,
        }
    }
}

impl Proxy<'_> {
    /// `http://<listen>`, for an S3 endpoint URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Add a toxic named `toxic` on every connection (toxicity 1.0).
    pub fn add(&self, toxic: &str, stream: Stream, t: Toxic) {
        self.add_with_toxicity(toxic, stream, t, 1.0)
    }

    /// Add a toxic that applies to a fraction `toxicity` of connections.
    pub fn add_with_toxicity(&self, toxic: &str, stream: Stream, t: Toxic, toxicity: f32) {
        let (kind, attrs) = t.kind_and_attributes();
        let body = format!(
            r#"{{"name":"{toxic}","type":"{kind}","stream":"{}","toxicity":{toxicity},"attributes":{attrs}}}"#,
            stream.as_str()
        );
        let (status, text) = self.server.send(
            "POST",
            &format!("/proxies/{}/toxics", self.name),
            Some(body),
        );
        assert_eq!(status, 200, "adding toxic {toxic} ({t:?}): {text}");
    }

    /// Remove one toxic; connections opened from now on are clean.
    pub fn remove(&self, toxic: &str) {
        let (status, text) = self.server.send(
            "DELETE",
            &format!("/proxies/{}/toxics/{toxic}", self.name),
            None,
        );
        assert_eq!(status, 204, "removing toxic {toxic}: {text}");
    }

    /// Names of the toxics currently installed.
    pub fn toxics(&self) -> String {
        self.server
            .send("GET", &format!("/proxies/{}/toxics", self.name), None)
            .1
    }
}
