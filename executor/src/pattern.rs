//! restic-style path patterns for `--exclude`/`--include`: a pattern without a leading `/`
//! may match at any depth; a match on a directory covers everything below it.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

pub struct PathMatcher {
    set: GlobSet,
    empty: bool,
}

impl PathMatcher {
    pub fn new(patterns: &[String]) -> Result<PathMatcher, String> {
        let mut b = GlobSetBuilder::new();
        let mut n = 0;
        for p in patterns {
            let p = p.trim();
            if p.is_empty() || p.starts_with('#') {
                continue;
            }
            let p = p.trim_end_matches('/');
            let anchored = if p.starts_with('/') {
                p.to_string()
            } else {
                format!("**/{p}")
            };
            let g = GlobBuilder::new(&anchored)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("pattern {p:?}: {e}"))?;
            b.add(g);
            n += 1;
        }
        Ok(PathMatcher {
            set: b.build().map_err(|e| e.to_string())?,
            empty: n == 0,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.empty
    }

    /// `path` is absolute-style with `/` separators (e.g. `/home/a/b.txt`). Raw bytes are
    /// matched lossily, which only matters for patterns that spell out invalid UTF-8.
    pub fn matches(&self, path: &[u8]) -> bool {
        if self.empty {
            return false;
        }
        let s = String::from_utf8_lossy(path);
        // Check the path and each ancestor: excluding a directory excludes its contents.
        let mut end = s.len();
        loop {
            let prefix = &s[..end];
            if !prefix.is_empty() && self.set.is_match(prefix) {
                return true;
            }
            match prefix.rfind('/') {
                Some(0) | None => return false,
                Some(i) => end = i,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restic_like_semantics() {
        let m = PathMatcher::new(&["*.tmp".into(), "/abs/dir".into(), "cache".into()]).unwrap();
        assert!(m.matches(b"/x/y/file.tmp"));
        assert!(m.matches(b"/abs/dir/inner/file"));
        assert!(!m.matches(b"/other/abs/dir/file"));
        assert!(m.matches(b"/home/u/cache/blob"));
        assert!(!m.matches(b"/home/u/cached"));
        assert!(!m.matches(b"/home/u/file.txt"));
        assert!(PathMatcher::new(&[]).unwrap().is_empty());
    }
}
