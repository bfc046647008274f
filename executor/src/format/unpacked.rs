//! Payload framing of unpacked files (index, snapshot, lock): v1 raw JSON, v2 `0x02`+zstd.

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("not supported encoding format (first byte {0:#04x})")]
    UnknownFormat(u8),
    #[error("zstd: {0}")]
    Zstd(std::io::Error),
}

pub fn encode(version: u32, json: &[u8]) -> Vec<u8> {
    if version < 2 {
        return json.to_vec();
    }
    let mut out = vec![2u8];
    out.extend_from_slice(&zstd::bulk::compress(json, 3).expect("in-memory zstd cannot fail"));
    out
}

pub fn decode(version: u32, payload: Vec<u8>) -> Result<Vec<u8>, FramingError> {
    if version < 2 {
        return Ok(payload);
    }
    match payload.first() {
        None | Some(b'{') | Some(b'[') => Ok(payload),
        // A streaming decoder: restic's frames may omit the content size.
        Some(2) => zstd::stream::decode_all(&payload[1..]).map_err(FramingError::Zstd),
        Some(&b) => Err(FramingError::UnknownFormat(b)),
    }
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
        assert_eq!(decode(2, e).unwrap(), j);
        assert_eq!(decode(2, j.to_vec()).unwrap(), j);
        assert_eq!(decode(2, b"[1]".to_vec()).unwrap(), b"[1]");
        assert!(decode(2, vec![9, 1]).is_err());
        // v1 never interprets the framing byte.
        assert_eq!(decode(1, vec![2, 3]).unwrap(), vec![2, 3]);
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
        let r = decode(2, b.clone());
        eprintln!(
            "decode of a {}-byte bomb (1 GiB of zeros): {:?}, ok={}, peak RSS {} MiB",
            b.len(),
            t.elapsed(),
            r.is_ok(),
            peak_rss_mib()
        );
        assert!(r.is_err(), "a 1 GiB bomb must not decode");
    }
}
