//! Content-defined chunking with exactly the cut points of `fastcdc::v2020::StreamCDC`
//! (512 KiB / 1 MiB / 8 MiB, normalization level 1, unseeded gear table), without its cost.
//!
//! StreamCDC zero-fills a fresh `MAX_CHUNK` buffer per stream and, after every chunk, shifts
//! the whole buffer down and zeroes the tail again: 8 MiB of memory traffic per 1 MiB chunk
//! and 16 MiB for a 30 KiB file. Here one buffer is kept per thread and only the unchunked
//! tail is shifted when it runs dry.
//!
//! Equivalence rests on how `cut` behaves: it never looks past `MAX_CHUNK` bytes and scans
//! forward, so a cut point it finds strictly before the end of a shorter slice is the one it
//! finds in a full window (the masks depend on the position only; for a slice shorter than
//! the average size the first loop stops at its end and the second does not run). When no
//! cut point shows up in what is buffered, more is read — the buffer grows from
//! [`INITIAL`] up to one window only for the rare chunk that needs it — so `cut` decides on
//! a full window or on the rest of the stream exactly as StreamCDC does.

use std::io::{ErrorKind, Read};

use super::{AVG_CHUNK, MAX_CHUNK, MIN_CHUNK};

const WINDOW: usize = MAX_CHUNK as usize;
/// Starting buffer size: several average chunks, half a maximal one.
const INITIAL: usize = 4 << 20;

struct Masks {
    s: u64,
    l: u64,
}

fn masks() -> Masks {
    use fastcdc::v2020::{MASKS, Normalization, logarithm2};
    let bits = logarithm2(AVG_CHUNK);
    let level = Normalization::Level1.bits();
    Masks {
        s: MASKS[(bits + level) as usize],
        l: MASKS[(bits - level) as usize],
    }
}

/// Length of the chunk that starts at `data[0]`; `data` must hold a full window or the rest
/// of the stream.
fn cut(m: &Masks, data: &[u8]) -> usize {
    fastcdc::v2020::cut(
        data,
        MIN_CHUNK as usize,
        AVG_CHUNK as usize,
        MAX_CHUNK as usize,
        m.s,
        m.l,
        m.s << 1,
        m.l << 1,
    )
    .1
}

/// A reusable chunking buffer; keep one per thread that chunks.
#[derive(Default)]
pub struct Chunker {
    buf: Vec<u8>,
}

impl Chunker {
    /// Split `prefix` followed by everything `r` yields into chunks and hand each to `emit`
    /// in order. Returns the number of bytes chunked; an I/O error is the outer error, an
    /// error from `emit` the inner one.
    pub fn chunk<E>(
        &mut self,
        prefix: &[u8],
        r: &mut dyn Read,
        mut emit: impl FnMut(Vec<u8>) -> Result<(), E>,
    ) -> std::io::Result<Result<u64, E>> {
        let m = masks();
        if self.buf.len() < INITIAL.max(prefix.len()) {
            // Zeroed once per thread, not per file.
            self.buf = vec![0; INITIAL.max(prefix.len())];
        }
        self.buf[..prefix.len()].copy_from_slice(prefix);
        let (mut start, mut end) = (0usize, prefix.len());
        let mut eof = false;
        let mut total = 0u64;
        loop {
            let avail = end - start;
            if avail > 0 {
                let n = cut(&m, &self.buf[start..end]);
                // A full window or the end of the stream: `cut` decides. Less: only a cut
                // point strictly inside what is buffered is certain.
                if eof || avail >= WINDOW || n < avail {
                    if let Err(e) = emit(self.buf[start..start + n].to_vec()) {
                        return Ok(Err(e));
                    }
                    start += n;
                    total += n as u64;
                    continue;
                }
            } else if eof {
                return Ok(Ok(total));
            }
            // Need more input: move the tail to the front, grow if it fills the buffer.
            self.buf.copy_within(start..end, 0);
            end = avail;
            start = 0;
            if end == self.buf.len() {
                let grown = (self.buf.len() * 2).min(WINDOW.max(self.buf.len()));
                self.buf.resize(grown, 0);
            }
            let filled_to = self.buf.len();
            while !eof && end < filled_to {
                match r.read(&mut self.buf[end..]) {
                    Ok(0) => eof = true,
                    Ok(n) => end += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
}

/// Read a file whose size says it is at most one chunk long. `Ok(Ok(data))` is the whole
/// file as one chunk (empty: no chunk); `Ok(Err(prefix))` means it has grown past
/// `MIN_CHUNK` since it was looked at, and `prefix` must go through a [`Chunker`] first.
pub fn read_small(r: &mut dyn Read, size_hint: u64) -> std::io::Result<Result<Vec<u8>, Vec<u8>>> {
    // One byte over the limit tells "exactly MIN_CHUNK" apart from "longer".
    let limit = MIN_CHUNK as u64 + 1;
    let mut data = Vec::with_capacity(size_hint.min(limit) as usize + 1);
    r.take(limit).read_to_end(&mut data)?;
    if data.len() as u64 <= MIN_CHUNK as u64 {
        Ok(Ok(data))
    } else {
        Ok(Err(data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn reference(data: &[u8]) -> Vec<(u64, usize)> {
        fastcdc::v2020::StreamCDC::new(data, MIN_CHUNK, AVG_CHUNK, MAX_CHUNK)
            .map(|c| {
                let c = c.unwrap();
                (c.offset, c.length)
            })
            .collect()
    }

    fn ours(data: &[u8], prefix_len: usize, read_size: usize) -> Vec<(u64, usize)> {
        /// Hands out at most `n` bytes per read, like a pipe or a slow file.
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.1.min(out.len()).min(self.0.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut got = Vec::new();
        let mut off = 0u64;
        let (p, rest) = data.split_at(prefix_len);
        let total = Chunker::default()
            .chunk(p, &mut Dribble(rest, read_size), |c| {
                assert_eq!(&c[..], &data[off as usize..off as usize + c.len()]);
                got.push((off, c.len()));
                off += c.len() as u64;
                Ok::<(), ()>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(total, data.len() as u64);
        got
    }

    #[test]
    fn boundaries_match_streamcdc() {
        let mut data = pseudo_random(20 << 20, 0x5eed);
        // A long run without cut points forces MAX_CHUNK cuts.
        data[3 << 20..13 << 20].fill(0);
        let want = reference(&data);
        assert!(want.len() > 5, "{want:?}");
        assert!(want.iter().any(|c| c.1 == MAX_CHUNK as usize));
        assert_eq!(ours(&data, 0, usize::MAX), want);
        assert_eq!(ours(&data, 700_000, 65_537), want);
        for len in [
            0,
            1,
            100,
            MIN_CHUNK as usize,
            MIN_CHUNK as usize + 1,
            3 << 20,
        ] {
            assert_eq!(ours(&data[..len], 0, 1 << 20), reference(&data[..len]));
        }
    }

    #[test]
    fn small_reads() {
        let data = pseudo_random(MIN_CHUNK as usize + 10, 7);
        let exact = &data[..MIN_CHUNK as usize];
        assert_eq!(read_small(&mut &exact[..], 5).unwrap().unwrap(), exact);
        assert_eq!(
            read_small(&mut &data[..], 5).unwrap().unwrap_err().len(),
            exact.len() + 1
        );
        assert!(read_small(&mut &b""[..], 0).unwrap().unwrap().is_empty());
    }
}
