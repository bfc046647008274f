//! Repository locations in the forms restic users already type (`-r`, `RESTIC_REPOSITORY`).
//!
//! Parsing is kept apart from the backends so that the operator and the CLI can validate a
//! location without opening a connection, and so that secrets are split out of the URL once,
//! here, and never travel with the printable location.

use std::fmt;
use std::path::PathBuf;

use super::{BackendError, BackendErrorKind, BackendResult};

#[derive(Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3(S3Location),
    Rest(RestLocation),
}

/// `s3:` locations. `endpoint` is `None` for AWS itself, where the SDK picks the regional
/// endpoint and virtual-hosted addressing; any other host is a "custom endpoint" (MinIO,
/// Ceph, Garage...), which nearly always wants path-style addressing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix without leading or trailing slash; empty for the bucket root.
    pub prefix: String,
}

/// `rest:` locations. The base URL has no credentials and ends with `/`.
#[derive(Clone, PartialEq, Eq)]
pub struct RestLocation {
    pub base: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

// Hand-written so that `{:?}` in a log line cannot leak the password.
impl fmt::Debug for RestLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestLocation")
            .field("base", &self.base)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl fmt::Debug for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(p) => f.debug_tuple("Local").field(p).finish(),
            Location::S3(s) => f.debug_tuple("S3").field(s).finish(),
            Location::Rest(r) => f.debug_tuple("Rest").field(r).finish(),
        }
    }
}

impl S3Location {
    pub fn display(&self) -> String {
        let host = self
            .endpoint
            .clone()
            .unwrap_or_else(|| "https://s3.amazonaws.com".to_string());
        if self.prefix.is_empty() {
            format!("s3:{host}/{}", self.bucket)
        } else {
            format!("s3:{host}/{}/{}", self.bucket, self.prefix)
        }
    }
}

impl RestLocation {
    pub fn display(&self) -> String {
        format!("rest:{}", self.base)
    }
}

impl Location {
    /// The location as shown to people: never contains credentials.
    pub fn display(&self) -> String {
        match self {
            Location::Local(p) => format!("local:{}", p.display()),
            Location::S3(s) => s.display(),
            Location::Rest(r) => r.display(),
        }
    }
}

/// Schemes restic knows that fleetsnap does not implement: failing clearly beats treating
/// `sftp:host:/path` as a relative local directory and creating it.
const UNSUPPORTED: [&str; 7] = [
    "sftp:", "b2:", "azure:", "gs:", "swift:", "rclone:", "s3://",
];

pub fn parse(url: &str) -> BackendResult<Location> {
    let bad = |msg: String| {
        BackendError::new(
            BackendErrorKind::Other,
            "open",
            "repository location",
            redact(url),
            msg,
        )
    };
    if url.is_empty() {
        return Err(bad("the repository location is empty".into()));
    }
    if let Some(rest) = url.strip_prefix("local:") {
        if rest.is_empty() {
            return Err(bad("local: needs a path".into()));
        }
        return Ok(Location::Local(PathBuf::from(rest)));
    }
    if let Some(rest) = url.strip_prefix("s3:")
        && !rest.starts_with("//")
    {
        return parse_s3(rest).map(Location::S3).map_err(bad);
    }
    if let Some(rest) = url.strip_prefix("rest:") {
        return parse_rest(rest).map(Location::Rest).map_err(bad);
    }
    for scheme in UNSUPPORTED {
        if url.starts_with(scheme) {
            return Err(bad(format!(
                "{} repositories are not supported (use a local path, s3: or rest:)",
                scheme.trim_end_matches(['/', ':'])
            )));
        }
    }
    Ok(Location::Local(PathBuf::from(url)))
}

fn parse_s3(rest: &str) -> Result<S3Location, String> {
    let (scheme, rest) = if let Some(r) = rest.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = rest.strip_prefix("http://") {
        ("http", r)
    } else {
        // restic's `s3:host/bucket` form talks TLS.
        ("https", rest)
    };
    let mut parts = rest.splitn(3, '/');
    let host = parts.next().unwrap_or_default();
    let bucket = parts.next().unwrap_or_default();
    let prefix = parts.next().unwrap_or_default().trim_matches('/');
    if host.is_empty() {
        return Err("s3: needs a host, e.g. s3:https://minio.example:9000/bucket/prefix".into());
    }
    if host.contains('@') {
        return Err(
            "s3: credentials do not belong in the URL; use AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY or an AWS profile"
                .into(),
        );
    }
    if bucket.is_empty() {
        return Err("s3: needs a bucket after the host".into());
    }
    if prefix.split('/').any(|c| c == ".." || c == ".") {
        return Err("s3: the prefix must not contain '.' or '..' components".into());
    }
    let is_aws = {
        let name = host.split(':').next().unwrap_or(host);
        scheme == "https" && (name == "s3.amazonaws.com" || name.ends_with(".amazonaws.com"))
    };
    Ok(S3Location {
        endpoint: (!is_aws).then(|| format!("{scheme}://{host}")),
        bucket: bucket.to_string(),
        prefix: prefix.to_string(),
    })
}

fn parse_rest(rest: &str) -> Result<RestLocation, String> {
    let (scheme, after) = if let Some(r) = rest.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = rest.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err("rest: needs an http:// or https:// URL".into());
    };
    let (authority, path) = match after.find('/') {
        Some(i) => (&after[..i], &after[i..]),
        None => (after, "/"),
    };
    // The last '@' separates userinfo: passwords may contain '@' if not percent-encoded.
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
        None => (None, authority),
    };
    if hostport.is_empty() {
        return Err("rest: needs a host".into());
    }
    let (user, password) = match userinfo {
        None => (None, None),
        Some(ui) => {
            let (u, p) = match ui.find(':') {
                Some(i) => (&ui[..i], Some(&ui[i + 1..])),
                None => (ui, None),
            };
            let u = percent_decode(u).ok_or("rest: bad percent-encoding in the user name")?;
            let p = p
                .map(|p| percent_decode(p).ok_or("rest: bad percent-encoding in the password"))
                .transpose()?;
            (Some(u), p)
        }
    };
    let mut path = path.to_string();
    if let Some(i) = path.find(['?', '#']) {
        path.truncate(i);
    }
    if !path.ends_with('/') {
        path.push('/');
    }
    Ok(RestLocation {
        base: format!("{scheme}://{hostport}{path}"),
        user,
        password,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A URL fit for messages: userinfo in `scheme://user:pass@host` replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let authority_end = url[start..]
        .find('/')
        .map(|i| start + i)
        .unwrap_or(url.len());
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***@{}", &url[..start], &url[start + at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(url: &str) -> S3Location {
        match parse(url).unwrap() {
            Location::S3(s) => s,
            other => panic!("{url} parsed as {other:?}"),
        }
    }

    fn rest(url: &str) -> RestLocation {
        match parse(url).unwrap() {
            Location::Rest(r) => r,
            other => panic!("{url} parsed as {other:?}"),
        }
    }

    #[test]
    fn local_forms() {
        assert_eq!(
            parse("/srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            parse("local:/srv/repo").unwrap(),
            Location::Local("/srv/repo".into())
        );
        assert_eq!(
            parse("relative/dir").unwrap(),
            Location::Local("relative/dir".into())
        );
        assert!(parse("").is_err());
        assert!(parse("local:").is_err());
    }

    #[test]
    fn s3_forms() {
        let l = s3("s3:http://127.0.0.1:9000/bucket/hosts/web-1");
        assert_eq!(l.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(l.bucket, "bucket");
        assert_eq!(l.prefix, "hosts/web-1");

        let l = s3("s3:minio.internal:9000/b/");
        assert_eq!(l.endpoint.as_deref(), Some("https://minio.internal:9000"));
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("b", ""));

        let l = s3("s3:s3.amazonaws.com/bucket/p/");
        assert_eq!(l.endpoint, None);
        assert_eq!(l.prefix, "p");
        let l = s3("s3:https://s3.eu-west-1.amazonaws.com/bucket");
        assert_eq!(l.endpoint, None);
        assert_eq!(l.display(), "s3:https://s3.amazonaws.com/bucket");

        assert_eq!(
            s3("s3:http://h:1/b/p").display(),
            "s3:http://h:1/b/p".to_string()
        );
    }

    #[test]
    fn s3_errors() {
        for u in [
            "s3:",
            "s3:host",
            "s3:host/",
            "s3:https:///b",
            "s3:http://h/b/../x",
        ] {
            assert!(parse(u).is_err(), "{u} accepted");
        }
        let e = parse("s3:http://key:secret@h/b").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn rest_forms_and_credentials() {
        let r = rest("rest:http://127.0.0.1:8000/");
        assert_eq!(r.base, "http://127.0.0.1:8000/");
        assert_eq!((r.user.clone(), r.password.clone()), (None, None));

        let r = rest("rest:https://alice:p%40ss:w@backup.example:8443/alice/repo");
        assert_eq!(r.base, "https://backup.example:8443/alice/repo/");
        assert_eq!(r.user.as_deref(), Some("alice"));
        assert_eq!(r.password.as_deref(), Some("p@ss:w"));
        let shown = Location::Rest(r.clone()).display();
        assert!(
            !shown.contains("p@ss") && !shown.contains("alice:"),
            "{shown}"
        );
        assert!(!format!("{r:?}").contains("p@ss"));

        let r = rest("rest:http://u:raw@pass@h/");
        assert_eq!(r.password.as_deref(), Some("raw@pass"));
        assert_eq!(r.base, "http://h/");

        assert!(parse("rest:ftp://h/").is_err());
        assert!(parse("rest:http:///x").is_err());
    }

    #[test]
    fn unsupported_schemes_fail_clearly() {
        for u in ["sftp:user@host:/srv", "b2:bucket:path", "s3://bucket/x"] {
            let e = parse(u).unwrap_err();
            assert!(e.message.contains("not supported"), "{u}: {e}");
        }
    }

    #[test]
    fn redaction() {
        assert_eq!(redact("rest:http://u:p@h:1/x"), "rest:http://***@h:1/x");
        assert_eq!(redact("rest:http://h:1/a@b"), "rest:http://h:1/a@b");
        assert_eq!(redact("/plain/path"), "/plain/path");
        let e = parse("rest:http://u:sekrit@h:1/%zz").unwrap();
        assert_eq!(e.display(), "rest:http://h:1/%zz/");
        let e = parse("rest:http://u:%zz@h/").unwrap_err();
        assert!(!e.to_string().contains("%zz@"), "{e}");
    }
}
