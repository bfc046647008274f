//! Payload framing of unpacked files (index, snapshot, lock): v1 raw JSON, v2 `0x02`+zstd.

use std::io::Read;

use crate::limits::human;

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("not supported encoding format (first byte {0:#04x})")]
    UnknownFormat(u8),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
    /// The payload is, or decompresses to, more than the caller's limit; says which.
    #[error("{0}")]
    TooLarge(String),
}

pub fn encode(version: u32, json: &[u8]) -> Vec<u8> {
    if version < 2 {
        return json.to_vec();
    }
    let mut out = vec![2u8];
    out.extend_from_slice(&zstd::bulk::compress(json, 3).expect("in-memory zstd cannot fail"));
    out
}

/// Unframes `payload` into at most `limit` bytes of JSON. Decompression streams into a
/// buffer that stops at `limit + 1` bytes, so a small frame that expands to gigabytes (a
/// "zstd bomb") costs `limit` bytes and a window of at most 2^[`ZSTD_WINDOW_LOG_MAX`], not
/// its expanded size; a frame that declares a larger content size is refused before
/// decoding.
///
/// [`ZSTD_WINDOW_LOG_MAX`]: crate::limits::ZSTD_WINDOW_LOG_MAX
pub fn decode(version: u32, payload: Vec<u8>, limit: u64) -> Result<Vec<u8>, FramingError> {
    let raw = |payload: Vec<u8>| {
        if payload.len() as u64 > limit {
            return Err(FramingError::TooLarge(format!(
                "its content is {}, larger than the {} limit",
                human(payload.len() as u64),
                human(limit)
            )));
        }
        Ok(payload)
    };
    if version < 2 {
        return raw(payload);
    }
    match payload.first() {
        None | Some(b'{') | Some(b'[') => raw(payload),
        Some(2) => decompress_bounded(&payload[1..], limit),
        Some(&b) => Err(FramingError::UnknownFormat(b)),
    }
}

fn decompress_bounded(frame: &[u8], limit: u64) -> Result<Vec<u8>, FramingError> {
    // restic's frames may omit the content size; when present it is checked first and used
    // as the buffer size (it is only a hint: the bounded read below is what holds).
    let declared = zstd::zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten();
    if let Some(n) = declared
        && n > limit
    {
        return Err(FramingError::TooLarge(format!(
            "its compressed content declares {}, larger than the {} limit",
            human(n),
            human(limit)
        )));
    }
    let mut dec = zstd::stream::read::Decoder::with_buffer(frame).map_err(FramingError::Zstd)?;
    dec.window_log_max(crate::limits::ZSTD_WINDOW_LOG_MAX)
        .map_err(FramingError::Zstd)?;
    let mut out = Vec::with_capacity(declared.unwrap_or(0).min(limit) as usize);
    dec.take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(FramingError::Zstd)?;
    if out.len() as u64 > limit {
        return Err(FramingError::TooLarge(format!(
            "its content decompresses to data larger than the {} limit",
            human(limit)
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_rules() {
        let j = br#"{"a":1}"#;
        assert_eq!(encode(1, j), j);
        let e = encode(2, j);
        assert_eq!(e[0], 2);
        assert_eq!(decode(2, e.clone(), 100).unwrap(), j);
        assert_eq!(decode(2, j.to_vec(), 100).unwrap(), j);
        assert_eq!(decode(2, b"[1]".to_vec(), 100).unwrap(), b"[1]");
        assert!(decode(2, vec![9, 1], 100).is_err());
        // v1 never interprets the framing byte.
        assert_eq!(decode(1, vec![2, 3], 100).unwrap(), vec![2, 3]);
        // Exactly at the limit is fine, one byte over is not, in every framing.
        assert_eq!(decode(2, e.clone(), j.len() as u64).unwrap(), j);
        for (v, p) in [(2, e), (2, j.to_vec()), (1, j.to_vec())] {
            assert!(matches!(
                decode(v, p, j.len() as u64 - 1),
                Err(FramingError::TooLarge(_))
            ));
        }
    }

    /// Peak resident memory of this process so far, in MiB (Linux `VmHWM`).
    fn peak_rss_mib() -> u64 {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap()
            / 1024
    }

    /// `[2]` + zstd of `n` zero bytes, streamed: ~40 KB for 1 GiB.
    fn bomb(n: u64) -> Vec<u8> {
        use std::io::Write as _;
        let mut enc = zstd::stream::Encoder::new(vec![2u8], 3).unwrap();
        let chunk = vec![0u8; 1 << 20];
        for _ in 0..n / chunk.len() as u64 {
            enc.write_all(&chunk).unwrap();
        }
        enc.finish().unwrap()
    }

    #[test]
    fn unpacked_decode_caps_output() {
        let b = bomb(1 << 30);
        let t = std::time::Instant::now();
        let r = decode(2, b.clone(), crate::limits::MAX_INDEX);
        let (took, peak) = (t.elapsed(), peak_rss_mib());
        eprintln!(
            "decode of a {}-byte bomb (1 GiB of zeros): {took:?}, ok={}, peak RSS {peak} MiB",
            b.len(),
            r.is_ok(),
        );
        let e = r.expect_err("a 1 GiB bomb must not decode");
        assert!(matches!(e, FramingError::TooLarge(_)), "{e}");
        assert!(
            e.to_string().contains("larger than the 64 MiB limit"),
            "{e}"
        );
        // The decode held at most the cap (plus the growth of its buffer), never the GiB;
        // other tests run alongside, so this is generous.
        assert!(peak < 512, "peak RSS {peak} MiB");
        assert!(took < std::time::Duration::from_secs(20), "{took:?}");
    }

    #[test]
    fn declared_content_size_is_refused_before_decoding() {
        let frame = zstd::bulk::compress(&vec![0u8; 1 << 20], 3).unwrap();
        let mut p = vec![2u8];
        p.extend_from_slice(&frame);
        let e = decode(2, p, 1000).unwrap_err().to_string();
        assert!(
            e.contains("declares 1 MiB, larger than the 1000 bytes limit"),
            "{e}"
        );
    }
}
