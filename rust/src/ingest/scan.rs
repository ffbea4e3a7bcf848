//! Structural scan of unquoted text: bit masks of the delimiter, newline and quote bytes, 64
//! bytes at a time (SSE2 compares on x86-64, AVX-512BW where the CPU has it), walked with bit
//! tricks instead of byte-by-byte searches. A quote anywhere sends the text to the quote-aware
//! splitter.

use crate::hint::prefetch;

/// How far ahead of the scan the input is requested from memory (the hardware prefetcher
/// stops at page boundaries).
const PREFETCH_AHEAD: usize = 1024;

/// Delimiters and newlines of `data`, consumed in order, found with the block kernel `K`.
pub(crate) struct Marks<'a, K> {
    data: &'a [u8],
    delimiter: u8,
    kernel: K,
    /// Start of the current 64-byte block; bit `k` of a mask = byte `base + k`.
    base: usize,
    delimiters: u64,
    newlines: u64,
    quoted: bool,
}

/// Computes the masks of one 64-byte block: bytes equal to the delimiter, to a newline, and
/// whether any is a double quote.
pub(crate) trait Kernel: Copy {
    fn masks(self, block: &[u8; 64], delimiter: u8) -> (u64, u64, bool);
}

/// SSE2 compares, 16 bytes at a time (in every x86-64 CPU); plain code elsewhere.
#[derive(Clone, Copy)]
pub(crate) struct Baseline;

impl Kernel for Baseline {
    #[inline(always)]
    fn masks(self, block: &[u8; 64], delimiter: u8) -> (u64, u64, bool) {
        masks64(block, delimiter)
    }
}

/// AVX-512BW compares of the whole block at once. A value exists only on CPUs that have it.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Avx512(());

#[cfg(target_arch = "x86_64")]
impl Avx512 {
    pub fn detect() -> Option<Self> {
        std::arch::is_x86_feature_detected!("avx512bw").then_some(Avx512(()))
    }
}

#[cfg(target_arch = "x86_64")]
impl Kernel for Avx512 {
    #[inline(always)]
    fn masks(self, block: &[u8; 64], delimiter: u8) -> (u64, u64, bool) {
        // SAFETY: an `Avx512` value proves the CPU has AVX-512BW; the load reads `block`.
        unsafe { masks64_avx512(block, delimiter) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
#[inline]
fn masks64_avx512(block: &[u8; 64], delimiter: u8) -> (u64, u64, bool) {
    use std::arch::x86_64::*;
    // SAFETY: an unaligned 64-byte read inside `block`.
    let v = unsafe { _mm512_loadu_si512(block.as_ptr() as *const __m512i) };
    let d = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(delimiter as i8));
    let n = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'\n' as i8));
    let q = _mm512_cmpeq_epi8_mask(v, _mm512_set1_epi8(b'"' as i8));
    (d, n, q != 0)
}

/// Masks of the bytes of `block` equal to `delimiter`, to a newline, and to a double quote (any).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn masks64(block: &[u8; 64], delimiter: u8) -> (u64, u64, bool) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86-64 baseline; the loads are unaligned reads inside `block`.
    unsafe {
        let vd = _mm_set1_epi8(delimiter as i8);
        let vn = _mm_set1_epi8(b'\n' as i8);
        let vq = _mm_set1_epi8(b'"' as i8);
        let (mut md, mut mn) = (0u64, 0u64);
        let mut q = _mm_setzero_si128();
        for k in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * k) as *const __m128i);
            md |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, vd)) as u16 as u64) << (16 * k);
            mn |= (_mm_movemask_epi8(_mm_cmpeq_epi8(v, vn)) as u16 as u64) << (16 * k);
            q = _mm_or_si128(q, _mm_cmpeq_epi8(v, vq));
        }
        (md, mn, _mm_movemask_epi8(q) != 0)
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn masks64(block: &[u8; 64], delimiter: u8) -> (u64, u64, bool) {
    let (mut md, mut mn, mut q) = (0u64, 0u64, false);
    for (k, &c) in block.iter().enumerate() {
        md |= ((c == delimiter) as u64) << k;
        mn |= ((c == b'\n') as u64) << k;
        q |= c == b'"';
    }
    (md, mn, q)
}

impl<'a, K: Kernel> Marks<'a, K> {
    pub fn new(data: &'a [u8], delimiter: u8, kernel: K) -> Self {
        let mut m = Marks { data, delimiter, kernel, base: 0, delimiters: 0, newlines: 0, quoted: false };
        m.load();
        m
    }

    #[inline(always)]
    fn load(&mut self) {
        let rest = &self.data[self.base.min(self.data.len())..];
        prefetch(rest.as_ptr().wrapping_add(PREFETCH_AHEAD));
        let (d, n, q) = if rest.len() >= 64 {
            self.kernel.masks(rest[..64].try_into().expect("64 bytes"), self.delimiter)
        } else {
            // Zero padding: a zero delimiter would match it, hence the mask of valid bits.
            let mut block = [0u8; 64];
            block[..rest.len()].copy_from_slice(rest);
            let (d, n, q) = self.kernel.masks(&block, self.delimiter);
            let valid = if rest.is_empty() { 0 } else { u64::MAX >> (64 - rest.len()) };
            (d & valid, n & valid, q)
        };
        self.delimiters = d;
        self.newlines = n;
        self.quoted |= q;
    }

    /// Whether a double quote was seen in the blocks scanned so far (up to the last mark
    /// returned, and at most to the end of its 64-byte block).
    #[inline]
    pub fn quoted(&self) -> bool {
        self.quoted
    }

    /// Moves to the next block; false past the end of the data.
    #[inline]
    fn advance(&mut self) -> bool {
        self.base += 64;
        if self.base >= self.data.len() {
            self.delimiters = 0;
            self.newlines = 0;
            return false;
        }
        self.load();
        true
    }

    /// Reads one line: writes the positions of its first delimiters into `ends` (as many as
    /// fit) and returns how many it wrote, the position of the newline ending the line (None:
    /// the data ends first) and the number of delimiters on the line past those written.
    #[inline(always)]
    pub fn line(&mut self, ends: &mut [usize]) -> (usize, Option<usize>, usize) {
        let (mut written, mut more) = (0usize, 0usize);
        loop {
            let newline = self.newlines & self.newlines.wrapping_neg();
            let before = if newline != 0 { newline - 1 } else { u64::MAX };
            let mut d = self.delimiters & before;
            while d != 0 && written < ends.len() {
                ends[written] = self.base + d.trailing_zeros() as usize;
                written += 1;
                d &= d - 1;
            }
            more += d.count_ones() as usize;
            if newline != 0 {
                self.delimiters &= !(before | newline);
                self.newlines &= !newline;
                return (written, Some(self.base + newline.trailing_zeros() as usize), more);
            }
            if !self.advance() {
                return (written, None, more);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_match_a_plain_search() {
        check_kernel(Baseline);
        #[cfg(target_arch = "x86_64")]
        if let Some(kernel) = Avx512::detect() {
            check_kernel(kernel);
        }
    }

    fn check_kernel<K: Kernel>(kernel: K) {
        let mut data: Vec<u8> = b"abc,defghijklmnop\nq,,rstuvwxyz0123456789\xff\x80,x\n".repeat(5);
        data.extend_from_slice(b",\n\n,,tail");
        for len in [0, 1, 17, 18, 63, 64, 65, 130, data.len()] {
            let d = &data[..len];
            for keep in [0, 1, 2, 5] {
                // Expected: per line, the first `keep` delimiters, the newline, the other delimiters.
                let mut expected = Vec::new();
                let mut start = 0;
                while start < d.len() {
                    let newline = d[start..].iter().position(|&c| c == b'\n').map(|k| start + k);
                    let end = newline.unwrap_or(d.len());
                    let commas: Vec<usize> = (start..end).filter(|&i| d[i] == b',').collect();
                    let written = commas.len().min(keep);
                    expected.push((commas[..written].to_vec(), newline, commas.len() - written));
                    start = end + 1;
                }
                let mut m = Marks::new(d, b',', kernel);
                let mut found = Vec::new();
                let mut ends = vec![0; keep];
                for _ in 0..expected.len() {
                    let (written, newline, more) = m.line(&mut ends);
                    found.push((ends[..written].to_vec(), newline, more));
                }
                assert_eq!(found, expected, "len {len}, keep {keep}");
                assert_eq!(m.line(&mut ends), (0, None, 0), "len {len}, keep {keep}: past the end");
            }
        }
        let mut text = vec![b'a'; 200];
        text[150] = b'"';
        let mut m = Marks::new(&text, b',', kernel);
        assert!(!m.quoted());
        assert_eq!(m.line(&mut [0; 2]), (0, None, 0));
        assert!(m.quoted());
    }
}
