//! Go `strconv.Quote` / `Unquote` for file names, which are arbitrary bytes on Unix.
//! restic stores names Quote-escaped (without the surrounding quotes) inside JSON strings.

/// Whether Go's `strconv.IsPrint` holds. Go uses Unicode tables (L, M, N, P, S and U+0020);
/// we approximate with std's classification plus the non-printing format and private-use
/// ranges. A different choice here only changes which (still valid) escape is written.
fn is_print(c: char) -> bool {
    if c == ' ' {
        return true;
    }
    if c.is_control() || c.is_whitespace() {
        return false;
    }
    let u = c as u32;
    !matches!(u,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F
        | 0xD800..=0xF8FF | 0xFEFF | 0xFFF0..=0xFFFB | 0xFFFE | 0xFFFF
        | 0xE0000..=0xE007F | 0xF0000..=0x10FFFF)
        && (u & 0xFFFE) != 0xFFFE
}

/// Escape raw name bytes exactly like Go's `strconv.Quote`, minus the outer quotes.
pub fn quote(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, None),
            Err(e) => {
                let (v, tail) = rest.split_at(e.valid_up_to());
                let n = e.error_len().unwrap_or(tail.len());
                (
                    std::str::from_utf8(v).expect("valid prefix"),
                    Some(&tail[..n]),
                )
            }
        };
        for c in valid.chars() {
            escape_char(c, &mut out);
        }
        rest = &rest[valid.len()..];
        if let Some(bad) = bad {
            // Go escapes each byte that does not start a valid sequence on its own.
            out.push_str(&format!("\\x{:02x}", bad[0]));
            rest = &rest[1..];
        }
    }
    out
}

fn escape_char(c: char, out: &mut String) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        c if is_print(c) => out.push(c),
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\x{:02x}", c as u32)),
        c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
        c => out.push_str(&format!("\\U{:08x}", c as u32)),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid escaped name {0:?}")]
pub struct UnquoteError(pub String);

/// Inverse of [`quote`]: Go `strconv.Unquote` of a double-quoted string body.
pub fn unquote(s: &str) -> Result<Vec<u8>, UnquoteError> {
    let err = || UnquoteError(s.to_string());
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let hex_n = |i: usize, n: usize| -> Result<u32, UnquoteError> {
        let h = s.get(i..i + n).ok_or_else(err)?;
        u32::from_str_radix(h, 16).map_err(|_| err())
    };
    while i < b.len() {
        let c = b[i];
        if c == b'\n' || c == b'"' {
            return Err(err());
        }
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let e = *b.get(i + 1).ok_or_else(err)?;
        i += 2;
        match e {
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'\\' => out.push(b'\\'),
            b'"' => out.push(b'"'),
            b'\'' => return Err(err()),
            b'x' => {
                out.push(hex_n(i, 2)? as u8);
                i += 2;
            }
            b'0'..=b'7' => {
                let o = s.get(i - 1..i + 2).ok_or_else(err)?;
                let v = u32::from_str_radix(o, 8).map_err(|_| err())?;
                if v > 255 {
                    return Err(err());
                }
                out.push(v as u8);
                i += 2;
            }
            b'u' | b'U' => {
                let n = if e == b'u' { 4 } else { 8 };
                let ch = char::from_u32(hex_n(i, n)?).ok_or_else(err)?;
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i += n;
            }
            _ => return Err(err()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table_cases() {
        let cases: &[(&[u8], &str)] = &[
            (b"latin1-caf\xe9.txt", "latin1-caf\\xe9.txt"),
            (b"raw-\xff\xfe-bytes.bin", "raw-\\xff\\xfe-bytes.bin"),
            (
                b"quote\"and\\backslash.txt",
                "quote\\\"and\\\\backslash.txt",
            ),
            (b"tab\there.txt", "tab\\there.txt"),
            (b"newline\nin-name.txt", "newline\\nin-name.txt"),
            (b"ctrl-\x01-del-\x7f.txt", "ctrl-\\x01-del-\\x7f.txt"),
            ("nbsp\u{a0}space.txt".as_bytes(), "nbsp\\u00a0space.txt"),
            (b"html-<&>-chars.txt", "html-<&>-chars.txt"),
            ("emoji-😀.txt".as_bytes(), "emoji-😀.txt"),
            (
                "unicode-ünïcödé-日本語.txt".as_bytes(),
                "unicode-ünïcödé-日本語.txt",
            ),
            (b"bell\x07\x08\x0c\r\x0b", "bell\\a\\b\\f\\r\\v"),
            ("fmt\u{200b}\u{e0001}".as_bytes(), "fmt\\u200b\\U000e0001"),
        ];
        for (raw, q) in cases {
            assert_eq!(quote(raw), *q);
            assert_eq!(unquote(q).unwrap(), raw.to_vec());
        }
    }

    #[test]
    fn unquote_octal_and_errors() {
        assert_eq!(unquote("a\\101\\377").unwrap(), b"aA\xff");
        assert!(unquote("a\\").is_err());
        assert!(unquote("a\nb").is_err());
        assert!(unquote("\\q").is_err());
        assert!(unquote("\\x4").is_err());
        assert!(unquote("\\400").is_err());
    }

    #[test]
    fn every_byte_roundtrips() {
        let all: Vec<u8> = (0..=255u8).collect();
        assert_eq!(unquote(&quote(&all)).unwrap(), all);
    }
}
