//! restic's REST protocol (v2), as served by `rest-server` and `rclone serve restic`.
//!
//! The protocol is the cheapest way to get append-only storage: the server, not the client,
//! refuses deletes and overwrites. Those refusals must read as policy, not as a broken
//! server, hence the explicit messages below.

use std::io::Read as _;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use tracing::debug_span;

use super::local::short_read_error;
use super::retry::RetryPolicy;
use super::url::RestLocation;
use super::{
    Backend, BackendError, BackendErrorKind, BackendResult, FileInfo, FileType, check_name, is_id,
    object_path,
};

const V2: &str = "application/vnd.x.restic.rest.v2";

pub struct RestBackend {
    agent: ureq::Agent,
    loc: RestLocation,
    auth: Option<String>,
    retry: RetryPolicy,
}

#[derive(Deserialize)]
struct V2Entry {
    name: String,
    size: u64,
}

/// Per socket read/write limit: 120 s, or `FLEETSNAP_REST_TIMEOUT` (seconds, 1..3600) for
/// far-away servers and for tests that freeze one. A bad value is ignored with a warning.
fn io_timeout_from_env() -> Duration {
    const DEFAULT: Duration = Duration::from_secs(120);
    let Ok(v) = std::env::var("FLEETSNAP_REST_TIMEOUT") else {
        return DEFAULT;
    };
    match v.trim().parse::<u64>() {
        Ok(n) if (1..=3600).contains(&n) => Duration::from_secs(n),
        _ => {
            tracing::warn!(value = %v, "ignoring FLEETSNAP_REST_TIMEOUT: not a whole number in 1..=3600");
            DEFAULT
        }
    }
}

impl RestBackend {
    pub fn open(loc: RestLocation) -> BackendResult<Self> {
        let io_timeout = io_timeout_from_env();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            // Status codes carry meaning here (404, 403, 507), so they are not errors.
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(10)))
            // Whole packs travel in one request, so there is no total limit that suits every
            // link; instead each socket read and write must make progress within 2 min. The
            // write limit catches a server that stops reading a request body (frozen, or a
            // full disk that never answers); without it the send would wait forever.
            .timeout_per_read(Some(io_timeout))
            .timeout_per_write(Some(io_timeout))
            .max_idle_connections_per_host(16)
            .build()
            .into();
        let auth = loc.user.as_ref().map(|u| {
            let pair = format!("{}:{}", u, loc.password.as_deref().unwrap_or(""));
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        });
        Ok(RestBackend {
            agent,
            loc,
            auth,
            retry: RetryPolicy::default(),
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    fn url(&self, rel: &str) -> String {
        format!("{}{}", self.loc.base, rel)
    }

    fn req<B>(&self, mut r: ureq::RequestBuilder<B>) -> ureq::RequestBuilder<B> {
        if let Some(a) = &self.auth {
            r = r.header("Authorization", a);
        }
        r
    }

    fn transport_err(&self, op: &'static str, what: &str, e: ureq::Error) -> BackendError {
        use ureq::Error as E;
        let kind = match &e {
            E::Io(_)
            | E::Timeout(_)
            | E::ConnectionFailed
            | E::HostNotFound
            | E::Protocol(_)
            | E::BodyStalled => BackendErrorKind::Transient,
            _ => BackendErrorKind::Other,
        };
        let message = match &e {
            E::Timeout(_) => format!("timed out, the server did not answer in time ({e})"),
            _ => e.to_string(),
        };
        BackendError::new(kind, op, what, self.location(), message)
    }

    fn status_err(
        &self,
        op: &'static str,
        what: &str,
        resp: &mut ureq::http::Response<ureq::Body>,
    ) -> BackendError {
        let status = resp.status().as_u16();
        // rest-server puts a one-line reason in the body; keep it short in messages.
        let body = resp
            .body_mut()
            .with_config()
            .limit(4096)
            .read_to_string()
            .unwrap_or_default();
        let detail = body.trim();
        let kind = match status {
            404 => BackendErrorKind::NotFound,
            401 | 403 => BackendErrorKind::Denied,
            507 => BackendErrorKind::NoSpace,
            408 | 429 | 500..=599 => BackendErrorKind::Transient,
            _ => BackendErrorKind::Other,
        };
        let message = match (status, op) {
            (403, "remove") => format!(
                "the REST server refused to delete {what}: it is append-only for this identity"
            ),
            (403, "write") => format!(
                "the REST server refused to write {what}: it is append-only for this identity \
                 and the file may already exist"
            ),
            (401, _) => "the REST server rejected the credentials (HTTP 401)".to_string(),
            _ if detail.is_empty() => format!("HTTP {status}"),
            _ => format!("HTTP {status}: {detail}"),
        };
        BackendError::new(kind, op, what, self.location(), message)
    }

    fn head_size(&self, t: FileType, name: &str) -> BackendResult<u64> {
        let what = object_path(t, name, true);
        self.retry.run(|| {
            let mut resp = self
                .req(self.agent.head(self.url(&what)))
                .call()
                .map_err(|e| self.transport_err("read", &what, e))?;
            if !resp.status().is_success() {
                return Err(self.status_err("read", &what, &mut resp));
            }
            Ok(resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0))
        })
    }

    fn get(&self, t: FileType, name: &str, range: Option<(u64, u64)>) -> BackendResult<Vec<u8>> {
        let what = object_path(t, name, true);
        self.retry.run(|| {
            let mut r = self.req(self.agent.get(self.url(&what)));
            if let Some((offset, length)) = range {
                r = r.header("Range", format!("bytes={}-{}", offset, offset + length - 1));
            }
            let mut resp = r.call().map_err(|e| self.transport_err("read", &what, e))?;
            let status = resp.status().as_u16();
            if status == 416 {
                return Ok(Vec::new());
            }
            if !resp.status().is_success() {
                return Err(self.status_err("read", &what, &mut resp));
            }
            // With a range, never read past its end, even from a server that ignores Range
            // and answers 200 with the whole file.
            let cap = range.map_or(u64::MAX, |(o, l)| o.saturating_add(l));
            let mut body = Vec::new();
            resp.body_mut()
                .with_config()
                .limit(u64::MAX)
                .reader()
                .take(cap)
                .read_to_end(&mut body)
                .map_err(|e| {
                    BackendError::new(
                        BackendErrorKind::Transient,
                        "read",
                        what.clone(),
                        self.location(),
                        format!("download interrupted: {e}"),
                    )
                })?;
            // A server that ignores Range answers 200 with the whole file.
            if let (Some((offset, length)), 200) = (range, status) {
                let start = (offset as usize).min(body.len());
                let end = start.saturating_add(length as usize).min(body.len());
                body = body[start..end].to_vec();
            }
            Ok(body)
        })
    }
}

impl Backend for RestBackend {
    fn location(&self) -> String {
        self.loc.display()
    }

    fn create(&self) -> BackendResult<()> {
        let _span = debug_span!("backend.create", backend = "rest").entered();
        self.retry.run(|| {
            let mut resp = self
                .req(self.agent.post(self.url("?create=true")))
                .send_empty()
                .map_err(|e| self.transport_err("create", "repository", e))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.status_err("create", "repository", &mut resp))
            }
        })
    }

    fn list(&self, t: FileType) -> BackendResult<Vec<FileInfo>> {
        let _span = debug_span!("backend.list", backend = "rest", what = %t).entered();
        if t == FileType::Config {
            return match self.head_size(t, "config") {
                Ok(size) => Ok(vec![FileInfo::new("config", size)]),
                Err(e) if e.kind == BackendErrorKind::NotFound => Ok(vec![]),
                Err(e) => Err(e),
            };
        }
        let dir = t.dirname();
        let body = self.retry.run(|| {
            let mut resp = self
                .req(self.agent.get(self.url(&format!("{dir}/"))))
                .header("Accept", V2)
                .call()
                .map_err(|e| self.transport_err("list", dir, e))?;
            match resp.status().as_u16() {
                404 => return Ok(None),
                s if !(200..300).contains(&s) => {
                    return Err(self.status_err("list", dir, &mut resp));
                }
                _ => {}
            }
            let v2 = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with(V2));
            let body = resp
                .body_mut()
                .with_config()
                .limit(1 << 30)
                .read_to_vec()
                .map_err(|e| self.transport_err("list", dir, e))?;
            Ok(Some((v2, body)))
        })?;
        let Some((v2, body)) = body else {
            return Ok(vec![]);
        };
        let bad_json = |e: serde_json::Error| {
            BackendError::new(
                BackendErrorKind::Other,
                "list",
                dir,
                self.location(),
                format!("the REST server sent an unreadable listing: {e}"),
            )
        };
        let mut out = Vec::new();
        if v2 {
            let entries: Vec<V2Entry> = serde_json::from_slice(&body).map_err(bad_json)?;
            out.extend(
                entries
                    .into_iter()
                    .filter(|e| is_id(&e.name))
                    .map(|e| FileInfo::new(e.name, e.size)),
            );
        } else {
            // Protocol v1 servers list names only; sizes cost one HEAD each.
            let names: Vec<String> = serde_json::from_slice(&body).map_err(bad_json)?;
            for name in names.into_iter().filter(|n| is_id(n)) {
                let size = self.head_size(t, &name)?;
                out.push(FileInfo::new(name, size));
            }
        }
        Ok(out)
    }

    fn read(&self, t: FileType, name: &str) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let _span =
            debug_span!("backend.read", backend = "rest", what = %object_path(t, name, true))
                .entered();
        self.get(t, name, None)
    }

    fn read_prefix(&self, t: FileType, name: &str, max: u64) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let _span = debug_span!("backend.read_prefix", backend = "rest", what = %object_path(t, name, true), max)
            .entered();
        if max == 0 {
            return Ok(Vec::new());
        }
        self.get(t, name, Some((0, max)))
    }

    fn read_range(
        &self,
        t: FileType,
        name: &str,
        offset: u64,
        length: u64,
    ) -> BackendResult<Vec<u8>> {
        check_name(t, name, "read", &self.location())?;
        let what = object_path(t, name, true);
        let _span =
            debug_span!("backend.read_range", backend = "rest", what = %what, offset, length)
                .entered();
        if length == 0 {
            return Ok(Vec::new());
        }
        let buf = self.get(t, name, Some((offset, length)))?;
        if (buf.len() as u64) < length {
            return Err(short_read_error(
                what,
                self.location(),
                offset,
                length,
                buf.len(),
            ));
        }
        Ok(buf)
    }

    fn write(&self, t: FileType, name: &str, data: &[u8]) -> BackendResult<()> {
        check_name(t, name, "write", &self.location())?;
        let what = object_path(t, name, true);
        let _span = debug_span!("backend.write", backend = "rest", what = %what, size = data.len())
            .entered();
        self.retry.run(|| {
            let mut resp = self
                .req(self.agent.post(self.url(&what)))
                .header("Content-Type", "application/octet-stream")
                .send(data)
                .map_err(|e| self.transport_err("write", &what, e))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(self.status_err("write", &what, &mut resp))
            }
        })
    }

    fn remove(&self, t: FileType, name: &str) -> BackendResult<()> {
        check_name(t, name, "remove", &self.location())?;
        let what = object_path(t, name, true);
        let _span = debug_span!("backend.remove", backend = "rest", what = %what).entered();
        self.retry.run(|| {
            let mut resp = self
                .req(self.agent.delete(self.url(&what)))
                .call()
                .map_err(|e| self.transport_err("remove", &what, e))?;
            match resp.status().as_u16() {
                s if (200..300).contains(&s) => Ok(()),
                404 => Ok(()),
                _ => Err(self.status_err("remove", &what, &mut resp)),
            }
        })
    }
}
