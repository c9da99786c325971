//! CRC-64/XZ (the ECMA-182 polynomial, reflected, initial value and final
//! xor all ones; the CRC of `xz` and of Go's `crc64.ECMA`), the checksum of
//! every frame, computed with carry-less multiplication where the CPU has
//! it.
//!
//! Why a 64-bit CRC: a CRC whose polynomial has degree 64 detects every
//! error burst of 64 bits or fewer, so changing any one 64-bit word of a
//! frame always changes its checksum (a 32-bit CRC, or a hash, only makes
//! that likely); and it folds many bytes per instruction (`PCLMULQDQ`: 16,
//! AVX-512 `VPCLMULQDQ`: 64), which makes checking a large message cost a
//! fraction of copying it.
//!
//! The input is always a 16-byte head (the frame's length and id words) and
//! a body zero-padded to a multiple of 16 bytes, so every path folds whole
//! 16-byte blocks and a small frame takes one reduction. Three engines,
//! picked once at run time: AVX-512 `VPCLMULQDQ` folding 256 bytes a step,
//! `PCLMULQDQ` folding 128 (after Intel's "Fast CRC Computation for Generic
//! Polynomials Using PCLMULQDQ Instruction"), and a slicing-by-8 table
//! anywhere else. The tests hold each of them to a bit-at-a-time reference.
//!
//! `copy_in` and `copy_out` move a payload into or out of the ring and sum
//! it in one pass where they can (AVX-512: each 64 bytes loaded is stored
//! and folded from the same register), so a large message is read once.

use std::sync::atomic::{compiler_fence, AtomicU64, AtomicU8, Ordering::Relaxed, Ordering::SeqCst};

/// The ECMA-182 polynomial without its x^64 term, most significant bit
/// first.
const POLY: u64 = 0x42F0_E1EB_A9EA_3693;

/// The first 16 bytes summed: two words, their bytes as in memory (native
/// order). Two scalars rather than an array, so they travel in registers:
/// a 16-byte load of an array just stored as two words would wait for the
/// stores to drain (no store-to-load forwarding).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Head(pub u64, pub u64);

/// The CRC of `head` followed by `body` zero-padded to a multiple of 16
/// bytes.
pub(crate) fn checksum(head: Head, body: &[u8]) -> u64 {
    // SAFETY: `engine` picks only what the CPU reported.
    !unsafe { raw(engine(), !0, head, body) }
}

/// Copies `src[..copy_len]` to `dst` and returns `checksum(head, src)`,
/// reading `src` once where the CPU allows (AVX-512): each block loaded is
/// stored and summed from the same register.
///
/// # Safety
///
/// `dst` is valid for writes of `copy_len` bytes, which overlap no byte of
/// `src`.
pub(crate) unsafe fn copy_in(head: Head, src: &[u8], dst: *mut u8, copy_len: usize) -> u64 {
    assert!(copy_len <= src.len());
    #[cfg(target_arch = "x86_64")]
    if copy_len >= FUSED && engine() == Engine::Avx512 {
        // SAFETY: `engine` saw the CPU features; `dst` is the caller's.
        return !unsafe { x86::avx512_copy_in(!0, head, src, dst, copy_len) };
    }
    // SAFETY: the caller vouches for `dst`; `src` has `copy_len` bytes.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, copy_len) };
    checksum(head, src)
}

/// Copies `dst.len()` bytes from `src` into `dst` and returns
/// `checksum(head, dst)`: the sum of the bytes as they landed in `dst`,
/// whatever `src` holds by then.
///
/// # Safety
///
/// `src` is valid for reads of `dst.len()` bytes, which overlap no byte of
/// `dst`.
pub(crate) unsafe fn copy_out(head: Head, src: *const u8, dst: &mut [u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= FUSED && engine() == Engine::Avx512 {
        // SAFETY: `engine` saw the CPU features; `src` is the caller's.
        return !unsafe { x86::avx512_copy_out(!0, head, src, dst) };
    }
    // SAFETY: the caller vouches for `src`; `dst` is ours.
    unsafe { std::ptr::copy_nonoverlapping(src, dst.as_mut_ptr(), dst.len()) };
    // Summed from `dst`, never from `src` again.
    compiler_fence(SeqCst);
    checksum(head, dst)
}

/// Copies the shared words `src` into `dst` (`src.len() * 8` bytes), one
/// atomic load each, and returns `checksum(head, dst)`. Up to 112 bytes
/// the sum is folded from the loaded words themselves, not read back from
/// `dst`: a 16-byte read of two 8-byte stores just made waits for them to
/// drain (no store-to-load forwarding), which would cost a small message
/// more than its whole sum.
pub(crate) fn copy_out_words(head: Head, src: &[AtomicU64], dst: &mut [u8]) -> u64 {
    assert_eq!(dst.len(), src.len() * 8);
    #[cfg(target_arch = "x86_64")]
    if src.len() <= 14 && engine() != Engine::Table {
        // SAFETY: `engine` saw PCLMULQDQ and SSE4.1.
        return !unsafe { x86::small_words(!0, head, src, dst) };
    }
    for (s, o) in src.iter().zip(dst.chunks_exact_mut(8)) {
        o.copy_from_slice(&s.load(Relaxed).to_ne_bytes());
    }
    checksum(head, dst)
}

/// From this many bytes on, `copy_in`/`copy_out` fold as they copy.
const FUSED: usize = 256;

/// `checksum(head, body)` of the shared words `words`, summed where they
/// lie: what a loaned frame's sender sums at its commit, and what a
/// borrowing receiver checks before it lends the frame out. Each byte is
/// read once, and never through a `&[u8]`: up to 112 bytes one atomic
/// load a word, folded from the registers they were loaded into; with
/// AVX-512 straight into the registers it folds; else through a small
/// private buffer, a chunk at a time, summed from there. Words another
/// process changes while they are read give a sum of some mix of old and
/// new bytes, which the caller's comparison catches.
pub(crate) fn checksum_words(head: Head, words: &[AtomicU64]) -> u64 {
    let len = words.len() * 8;
    let src = words.as_ptr().cast::<u8>();
    let e = engine();
    #[cfg(target_arch = "x86_64")]
    {
        if words.len() <= 14 && e != Engine::Table {
            // Where `small_words` puts its copy, unread.
            let mut sink = [0u8; 112];
            // SAFETY: `engine` saw PCLMULQDQ and SSE4.1.
            return !unsafe { x86::small_words(!0, head, words, &mut sink[..len]) };
        }
        if len >= FUSED && e == Engine::Avx512 {
            // SAFETY: `engine` saw the CPU features; `src` is `len`
            // readable bytes, the words' (races: see `ring.rs`, "Payloads
            // cross the segment in bulk").
            return !unsafe { x86::avx512_at(!0, head, src, len) };
        }
    }
    // Chunks of a multiple of 16 bytes continue the register: each but
    // the last is summed without its last 16 bytes, which become the
    // next chunk's head.
    const CHUNK: usize = 1024;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); CHUNK];
    let (mut state, mut head, mut at) = (!0u64, head, 0);
    loop {
        let n = (len - at).min(CHUNK);
        // SAFETY: `at + n <= len` bytes of the words, read once into `buf`,
        // which is private and so never overlaps them (races: as above);
        // the `n` bytes copied are then initialized.
        let chunk = unsafe {
            std::ptr::copy_nonoverlapping(src.add(at), buf.as_mut_ptr().cast::<u8>(), n);
            std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n)
        };
        // Summed from `buf`, never from the words again.
        compiler_fence(SeqCst);
        if at + n == len {
            // SAFETY: `engine` picks only what the CPU reported.
            return !unsafe { raw(e, state, head, chunk) };
        }
        // SAFETY: as above.
        state = unsafe { raw(e, state, head, &chunk[..CHUNK - 16]) };
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&chunk[i..i + 8]);
            u64::from_ne_bytes(w)
        };
        head = Head(word(CHUNK - 16), word(CHUNK - 8));
        at += n;
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Table,
    #[cfg(target_arch = "x86_64")]
    Clmul,
    #[cfg(target_arch = "x86_64")]
    Avx512,
}

/// The fastest engine this CPU runs, detected once.
fn engine() -> Engine {
    static CHOSEN: AtomicU8 = AtomicU8::new(0);
    match CHOSEN.load(Relaxed) {
        1 => return Engine::Table,
        #[cfg(target_arch = "x86_64")]
        2 => return Engine::Clmul,
        #[cfg(target_arch = "x86_64")]
        3 => return Engine::Avx512,
        _ => {}
    }
    let (e, code) = detect();
    CHOSEN.store(code, Relaxed);
    e
}

#[cfg(target_arch = "x86_64")]
fn detect() -> (Engine, u8) {
    let clmul = is_x86_feature_detected!("pclmulqdq") && is_x86_feature_detected!("sse4.1");
    if clmul && is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("vpclmulqdq") {
        (Engine::Avx512, 3)
    } else if clmul {
        (Engine::Clmul, 2)
    } else {
        (Engine::Table, 1)
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn detect() -> (Engine, u8) {
    (Engine::Table, 1)
}

/// The CRC register after `head` and the padded `body`, from `state`
/// (no initial or final inversion).
///
/// # Safety
///
/// The CPU has the features engine `e` is compiled for: `e` is `engine()`
/// (or, in tests, one the test saw the CPU report).
unsafe fn raw(e: Engine, state: u64, head: Head, body: &[u8]) -> u64 {
    match e {
        Engine::Table => table::update(state, head, body),
        // SAFETY: the caller vouches for the features.
        #[cfg(target_arch = "x86_64")]
        Engine::Clmul => unsafe { x86::clmul(state, head, body) },
        #[cfg(target_arch = "x86_64")]
        Engine::Avx512 => unsafe { x86::avx512(state, head, body) },
    }
}

/// x^n mod P, most significant bit first.
const fn x_pow_mod(n: u32) -> u64 {
    let mut r: u64 = 1;
    let mut i = 0;
    while i < n {
        let carry = r >> 63;
        r <<= 1;
        if carry == 1 {
            r ^= POLY;
        }
        i += 1;
    }
    r
}

/// The two multipliers that carry a 128-bit block `bytes` bytes further
/// along the message: (for its low half, for its high half), reflected.
const fn fold_k(bytes: u32) -> (u64, u64) {
    (
        x_pow_mod(8 * bytes + 63).reverse_bits(),
        x_pow_mod(8 * bytes - 1).reverse_bits(),
    )
}

/// The reflected polynomial with its x^64 term, for Barrett reduction.
const BARRETT_POLY: u64 = (POLY.reverse_bits() << 1) | 1;

/// floor(x^128 / P), its terms x^64..x^1 reflected, for Barrett reduction.
const BARRETT_MU: u64 = {
    let full = (1u128 << 64) | POLY as u128;
    let (mut rem, mut q) = (0u128, 0u128);
    let mut i: i32 = 128;
    while i >= 0 {
        rem = (rem << 1) | (i == 128) as u128;
        if (rem >> 64) & 1 == 1 {
            rem ^= full;
            q |= 1 << i;
        }
        i -= 1;
    }
    ((q >> 1) as u64).reverse_bits()
};

mod table {
    use super::{Head, POLY};

    /// `T[k][b]`: the CRC register after byte `b` and then `k` zero bytes.
    static T: [[u64; 256]; 8] = {
        let reflected = POLY.reverse_bits();
        let mut t = [[0u64; 256]; 8];
        let mut b = 0;
        while b < 256 {
            let mut c = b as u64;
            let mut bit = 0;
            while bit < 8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ reflected
                } else {
                    c >> 1
                };
                bit += 1;
            }
            t[0][b] = c;
            b += 1;
        }
        let mut k = 1;
        while k < 8 {
            let mut b = 0;
            while b < 256 {
                let prev = t[k - 1][b];
                t[k][b] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
                b += 1;
            }
            k += 1;
        }
        t
    };

    #[inline(always)]
    fn word(crc: u64, w: [u8; 8]) -> u64 {
        let c = crc ^ u64::from_le_bytes(w);
        let byte = |i: u32| (c >> (8 * i) & 0xff) as usize;
        T[7][byte(0)]
            ^ T[6][byte(1)]
            ^ T[5][byte(2)]
            ^ T[4][byte(3)]
            ^ T[3][byte(4)]
            ^ T[2][byte(5)]
            ^ T[1][byte(6)]
            ^ T[0][byte(7)]
    }

    pub(super) fn update(mut crc: u64, head: Head, body: &[u8]) -> u64 {
        crc = word(crc, head.0.to_ne_bytes());
        crc = word(crc, head.1.to_ne_bytes());
        let mut w = [0u8; 8];
        let mut words = body.chunks_exact(8);
        for b in &mut words {
            w.copy_from_slice(b);
            crc = word(crc, w);
        }
        let padded = body.len().div_ceil(16) * 2;
        let rem = words.remainder();
        for i in body.len() / 8..padded {
            w = [0; 8];
            if i == body.len() / 8 {
                w[..rem.len()].copy_from_slice(rem);
            }
            crc = word(crc, w);
        }
        crc
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use std::sync::atomic::{compiler_fence, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};

    use super::{fold_k, Head, BARRETT_MU, BARRETT_POLY};

    const K16: (u64, u64) = fold_k(16);
    const K32: (u64, u64) = fold_k(32);
    const K48: (u64, u64) = fold_k(48);
    const K64: (u64, u64) = fold_k(64);
    const K80: (u64, u64) = fold_k(80);
    const K96: (u64, u64) = fold_k(96);
    const K112: (u64, u64) = fold_k(112);
    const K128: (u64, u64) = fold_k(128);
    const K192: (u64, u64) = fold_k(192);
    const K256: (u64, u64) = fold_k(256);

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn k(k: (u64, u64)) -> __m128i {
        _mm_set_epi64x(k.1 as i64, k.0 as i64)
    }

    /// `x` carried forward by the distance `k` was made for.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn fold(x: __m128i, k: __m128i) -> __m128i {
        _mm_xor_si128(
            _mm_clmulepi64_si128(x, k, 0x00),
            _mm_clmulepi64_si128(x, k, 0x11),
        )
    }

    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn load(block: &[u8]) -> __m128i {
        assert!(block.len() >= 16);
        // SAFETY: 16 readable bytes (checked); an unaligned load.
        unsafe { _mm_loadu_si128(block.as_ptr().cast()) }
    }

    /// The CRC from 128 pending bits: the low half folded onto the high,
    /// then Barrett reduction.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn reduce(acc: __m128i) -> u64 {
        let x = _mm_xor_si128(
            _mm_clmulepi64_si128(acc, k((K16.1, 0)), 0x00),
            _mm_srli_si128(acc, 8),
        );
        let pm = _mm_set_epi64x(BARRETT_POLY as i64, BARRETT_MU as i64);
        let t1 = _mm_clmulepi64_si128(x, pm, 0x00);
        let t2 = _mm_clmulepi64_si128(t1, pm, 0x10);
        let r = _mm_xor_si128(_mm_xor_si128(x, t2), _mm_slli_si128(t1, 8));
        _mm_extract_epi64(r, 1) as u64
    }

    /// Folds `blocks` (whole 16-byte blocks) into `acc` eight lanes at a
    /// time while at least 128 bytes are left; returns what is left.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn fold_by_8(acc: __m128i, blocks: &[u8]) -> (__m128i, &[u8]) {
        let mut chunks = blocks.chunks_exact(128);
        let Some(first) = chunks.next() else {
            return (acc, blocks);
        };
        let mut x: [__m128i; 8] = std::array::from_fn(|i| load(&first[16 * i..]));
        x[0] = _mm_xor_si128(x[0], fold(acc, k(K16)));
        let k128 = k(K128);
        for c in &mut chunks {
            for (i, xi) in x.iter_mut().enumerate() {
                *xi = _mm_xor_si128(fold(*xi, k128), load(&c[16 * i..]));
            }
        }
        let mut acc = x[7];
        for (xi, d) in x.iter().zip([K112, K96, K80, K64, K48, K32, K16]) {
            acc = _mm_xor_si128(acc, fold(*xi, k(d)));
        }
        (acc, chunks.remainder())
    }

    /// Folds `rest`, the end of the body (whole blocks, then maybe a
    /// tail to zero-pad), into `acc`, and reduces.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn finish(acc: __m128i, rest: &[u8]) -> u64 {
        let (mut acc, blocks) = fold_by_8(acc, &rest[..rest.len() / 16 * 16]);
        let k16 = k(K16);
        for b in blocks.chunks_exact(16) {
            acc = _mm_xor_si128(fold(acc, k16), load(b));
        }
        if !rest.len().is_multiple_of(16) {
            acc = _mm_xor_si128(fold(acc, k16), tail_block(rest));
        }
        reduce(acc)
    }

    /// `SHIFT[16 - t..]` is the shuffle that moves the last `t` bytes of a
    /// block to its start and zeroes the rest.
    const SHIFT: [u8; 32] = {
        let mut s = [0x80u8; 32];
        let mut i = 0;
        while i < 16 {
            s[i] = i as u8;
            i += 1;
        }
        s
    };

    /// The last `body.len() % 16` (> 0) bytes of `body` as a zero-padded
    /// block. Read in place, not copied into a zeroed buffer first: a
    /// load of a buffer just written in smaller pieces waits for the
    /// stores to drain (no store-to-load forwarding), longer than the rest
    /// of a small frame's sum takes.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn tail_block(body: &[u8]) -> __m128i {
        let t = body.len() % 16;
        debug_assert!(t > 0);
        if body.len() >= 16 {
            // The last 16 bytes, shifted down past those already summed.
            let last = load(&body[body.len() - 16..]);
            _mm_shuffle_epi8(last, load(&SHIFT[16 - t..]))
        } else {
            let (lo, hi) = match t {
                ..8 => (short_word(body), 0),
                _ => (word8(body), short_word(&body[8..])),
            };
            _mm_set_epi64x(hi as i64, lo as i64)
        }
    }

    /// Exactly 8 bytes as a little-endian word.
    #[inline]
    fn word8(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[..8]);
        u64::from_le_bytes(w)
    }

    /// Fewer than 8 bytes as a zero-padded little-endian word, from
    /// overlapping reads (bytes read twice land in the same place).
    #[inline]
    fn short_word(b: &[u8]) -> u64 {
        let n = b.len();
        debug_assert!(n < 8);
        let word4 =
            |at: usize| u64::from(u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]));
        match n {
            0 => 0,
            1..4 => {
                u64::from(b[0])
                    | u64::from(b[n / 2]) << (8 * (n / 2))
                    | u64::from(b[n - 1]) << (8 * (n - 1))
            }
            _ => word4(0) | word4(n - 4) << (8 * (n - 4)),
        }
    }

    /// The head words as the first block, with the register folded in
    /// (x86 is little-endian: the words' bytes as in memory).
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn head_block(state: u64, head: Head) -> __m128i {
        _mm_set_epi64x(head.1 as i64, (head.0 ^ state) as i64)
    }

    /// Multipliers carrying a block 0, 16, .., 112 bytes on (0 unused).
    const NEAR: [(u64, u64); 8] = [(0, 0), K16, K32, K48, K64, K80, K96, K112];

    /// Up to 128 bytes, head included: every block carried straight to the
    /// last one, all at once, rather than one after another: a small
    /// frame's sum then waits on one multiplication and the reduction,
    /// not on a chain of eight.
    #[inline]
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    fn small(state: u64, head: Head, body: &[u8]) -> u64 {
        debug_assert!(body.len() <= 112);
        let first = head_block(state, head);
        let n = body.len().div_ceil(16);
        if n == 0 {
            return reduce(first);
        }
        let last = match body.len() % 16 {
            0 => load(&body[16 * (n - 1)..]),
            _ => tail_block(body),
        };
        let mut acc = _mm_xor_si128(last, fold(first, k(NEAR[n])));
        for i in 0..n - 1 {
            acc = _mm_xor_si128(acc, fold(load(&body[16 * i..]), k(NEAR[n - 1 - i])));
        }
        reduce(acc)
    }

    /// `small` over up to 14 words loaded from shared memory, each stored
    /// into `dst` and summed from the register it was loaded into.
    #[target_feature(enable = "pclmulqdq,sse4.1")]
    pub(super) fn small_words(state: u64, head: Head, src: &[AtomicU64], dst: &mut [u8]) -> u64 {
        debug_assert!(src.len() <= 14 && dst.len() == src.len() * 8);
        let first = head_block(state, head);
        let n = src.len().div_ceil(2);
        if n == 0 {
            return reduce(first);
        }
        let mut block = |i: usize| {
            let w0 = src[2 * i].load(Relaxed);
            let w1 = src.get(2 * i + 1).map_or(0, |w| w.load(Relaxed));
            dst[16 * i..16 * i + 8].copy_from_slice(&w0.to_ne_bytes());
            if let Some(o) = dst.get_mut(16 * i + 8..16 * i + 16) {
                o.copy_from_slice(&w1.to_ne_bytes());
            }
            _mm_set_epi64x(w1 as i64, w0 as i64)
        };
        let mut acc = fold(first, k(NEAR[n]));
        for i in 0..n - 1 {
            acc = _mm_xor_si128(acc, fold(block(i), k(NEAR[n - 1 - i])));
        }
        reduce(_mm_xor_si128(acc, block(n - 1)))
    }

    #[target_feature(enable = "pclmulqdq,sse4.1")]
    pub(super) fn clmul(state: u64, head: Head, body: &[u8]) -> u64 {
        if body.len() <= 112 {
            return small(state, head, body);
        }
        finish(head_block(state, head), body)
    }

    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    fn k4(k: (u64, u64)) -> __m512i {
        _mm512_broadcast_i32x4(_mm_set_epi64x(k.1 as i64, k.0 as i64))
    }

    /// `x` (four blocks) carried forward by `k`'s distance, xor `y`.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    fn fold4(x: __m512i, k: __m512i, y: __m512i) -> __m512i {
        let lo = _mm512_clmulepi64_epi128(x, k, 0x00);
        let hi = _mm512_clmulepi64_epi128(x, k, 0x11);
        // 0x96: a ^ b ^ c.
        _mm512_ternarylogic_epi64(lo, hi, y, 0x96)
    }

    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    fn load4(b: &[u8]) -> __m512i {
        assert!(b.len() >= 64);
        // SAFETY: 64 readable bytes (checked); an unaligned load.
        unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
    }

    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    pub(super) fn avx512(state: u64, head: Head, body: &[u8]) -> u64 {
        if body.len() <= 112 {
            return small(state, head, body);
        }
        let n = body.len() / 256;
        let acc = fold_256(head_block(state, head), n, |at| load4(&body[at..]));
        finish(acc, &body[256 * n..])
    }

    /// Folds `chunks` chunks of 256 bytes into `acc`, four 64-byte lanes
    /// at a time; `lane(at)` gives the 64 bytes at offset `at`.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    fn fold_256(acc: __m128i, chunks: usize, mut lane: impl FnMut(usize) -> __m512i) -> __m128i {
        if chunks == 0 {
            return acc;
        }
        let mut x: [__m512i; 4] = std::array::from_fn(|i| lane(64 * i));
        x[0] = _mm512_xor_si512(x[0], _mm512_zextsi128_si512(fold(acc, k(K16))));
        let k256 = k4(K256);
        for c in 1..chunks {
            for (i, xi) in x.iter_mut().enumerate() {
                *xi = fold4(*xi, k256, lane(256 * c + 64 * i));
            }
        }
        // The four lanes' blocks sit 192, 128 and 64 bytes before the
        // last's.
        let t = fold4(x[0], k4(K192), x[3]);
        let t = fold4(x[1], k4(K128), t);
        let t = fold4(x[2], k4(K64), t);
        lanes(t)
    }

    /// `copy_in` (see there), reading `src` once: each 64 bytes loaded
    /// are stored to `dst` and summed from the same register.
    ///
    /// # Safety
    ///
    /// As `copy_in`.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    pub(super) unsafe fn avx512_copy_in(
        state: u64,
        head: Head,
        src: &[u8],
        dst: *mut u8,
        copy_len: usize,
    ) -> u64 {
        let n = copy_len / 256;
        let acc = fold_256(head_block(state, head), n, |at| {
            let v = load4(&src[at..]);
            // SAFETY: at + 64 <= copy_len bytes, which the caller vouches
            // `dst` may take.
            unsafe { _mm512_storeu_si512(dst.add(at).cast(), v) };
            v
        });
        let done = 256 * n;
        // SAFETY: as above, for the bytes after the chunks.
        unsafe {
            std::ptr::copy_nonoverlapping(src.as_ptr().add(done), dst.add(done), copy_len - done)
        };
        finish(acc, &src[done..])
    }

    /// `copy_out` (see there): each 64 bytes loaded from `src` are stored
    /// to `dst` and summed from the same register, so what is summed is
    /// what landed in `dst`.
    ///
    /// # Safety
    ///
    /// As `copy_out`.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    pub(super) unsafe fn avx512_copy_out(
        state: u64,
        head: Head,
        src: *const u8,
        dst: &mut [u8],
    ) -> u64 {
        let n = dst.len() / 256;
        let out = dst.as_mut_ptr();
        let acc = fold_256(head_block(state, head), n, |at| {
            // SAFETY: at + 64 <= dst.len() bytes, which the caller vouches
            // `src` has; `dst` has them too.
            unsafe {
                let v = _mm512_loadu_si512(src.add(at).cast());
                _mm512_storeu_si512(out.add(at).cast(), v);
                v
            }
        });
        let done = 256 * n;
        // SAFETY: as above, for the bytes after the chunks.
        unsafe { std::ptr::copy_nonoverlapping(src.add(done), out.add(done), dst.len() - done) };
        // The rest is summed from `dst`, never from `src` again.
        compiler_fence(SeqCst);
        finish(acc, &dst[done..])
    }

    /// `checksum_words` (see there): each 64 bytes loaded from `src` are
    /// folded from the register they were loaded into; the last bytes
    /// (fewer than 256) go through a private buffer.
    ///
    /// # Safety
    ///
    /// `src` is valid for reads of `len` bytes.
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    pub(super) unsafe fn avx512_at(state: u64, head: Head, src: *const u8, len: usize) -> u64 {
        let n = len / 256;
        let acc = fold_256(head_block(state, head), n, |at| {
            // SAFETY: at + 64 <= len bytes, which the caller vouches `src`
            // has; an unaligned load.
            unsafe { _mm512_loadu_si512(src.add(at).cast()) }
        });
        let done = 256 * n;
        let mut rest = [0u8; 256];
        // SAFETY: as above, for the bytes after the chunks; `rest` is
        // private.
        unsafe { std::ptr::copy_nonoverlapping(src.add(done), rest.as_mut_ptr(), len - done) };
        compiler_fence(SeqCst);
        finish(acc, &rest[..len - done])
    }

    /// Four blocks folded into one: each lane carried to the last.
    #[inline]
    #[target_feature(enable = "avx512f,vpclmulqdq,pclmulqdq,sse4.1")]
    fn lanes(x: __m512i) -> __m128i {
        let l0 = _mm512_extracti32x4_epi32::<0>(x);
        let l1 = _mm512_extracti32x4_epi32::<1>(x);
        let l2 = _mm512_extracti32x4_epi32::<2>(x);
        let l3 = _mm512_extracti32x4_epi32::<3>(x);
        let a = _mm_xor_si128(fold(l0, k(K48)), fold(l1, k(K32)));
        _mm_xor_si128(_mm_xor_si128(a, fold(l2, k(K16))), l3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// CRC-64/XZ one bit at a time, straight from its definition.
    fn reference(bytes: &[u8]) -> u64 {
        let reflected = POLY.reverse_bits();
        let mut crc = !0u64;
        for &b in bytes {
            crc ^= u64::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ reflected
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn padded(head: Head, body: &[u8]) -> Vec<u8> {
        let mut v = head.0.to_ne_bytes().to_vec();
        v.extend_from_slice(&head.1.to_ne_bytes());
        v.extend_from_slice(body);
        v.resize(16 + body.len().div_ceil(16) * 16, 0);
        v
    }

    fn engines() -> Vec<Engine> {
        let mut v = vec![Engine::Table];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("pclmulqdq") && is_x86_feature_detected!("sse4.1") {
                v.push(Engine::Clmul);
            }
            if engine() == Engine::Avx512 {
                v.push(Engine::Avx512);
            }
        }
        v
    }

    #[test]
    fn reference_is_crc_64_xz() {
        // The catalogued check value: the CRC of "123456789".
        assert_eq!(reference(b"123456789"), 0x995D_C9BB_DF19_39FA);
    }

    #[test]
    fn this_machine_uses_its_fastest_engine() {
        // Not an assertion about the CPU: a record, in the test log, of
        // which engine the other tests compared against the reference.
        eprintln!("crc64 engine: {:?}; tested: {:?}", engine(), engines());
    }

    #[test]
    fn every_engine_agrees_with_the_reference_at_every_length_to_2_kib() {
        let data: Vec<u8> = (0..2100u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let head = Head(0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210);
        for len in 0..=2100 {
            let want = reference(&padded(head, &data[..len]));
            for e in engines() {
                // SAFETY: `engines` lists what the CPU reported.
                let got = !unsafe { raw(e, !0, head, &data[..len]) };
                assert_eq!(got, want, "{e:?}, {len} bytes");
            }
        }
    }

    #[test]
    fn sums_in_place_agree_with_the_reference_at_every_length_to_5_kib() {
        // Past several of `checksum_words`' 1 KiB chunks, AVX-512's
        // 256-byte steps with every remainder, and the small path.
        let head = Head(0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210);
        for words in 0..=650usize {
            let src: Vec<AtomicU64> = (0..words as u64)
                .map(|i| AtomicU64::new(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect();
            let bytes: Vec<u8> = src
                .iter()
                .flat_map(|w| w.load(Relaxed).to_ne_bytes())
                .collect();
            let want = reference(&padded(head, &bytes));
            assert_eq!(checksum_words(head, &src), want, "{words} words");
        }
    }

    #[test]
    fn words_copied_out_sum_as_the_reference_at_every_length_to_300() {
        let head = Head(0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210);
        for words in 0..=38usize {
            let src: Vec<AtomicU64> = (0..words as u64)
                .map(|i| AtomicU64::new(i.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
                .collect();
            let bytes: Vec<u8> = src
                .iter()
                .flat_map(|w| w.load(Relaxed).to_ne_bytes())
                .collect();
            let mut out = vec![0xAAu8; words * 8];
            let sum = copy_out_words(head, &src, &mut out);
            assert_eq!(out, bytes, "{words} words");
            assert_eq!(sum, reference(&padded(head, &bytes)), "{words} words");
        }
    }

    proptest! {
        #[test]
        fn every_engine_agrees_with_the_reference(
            w1 in any::<u64>(),
            w2 in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..5000),
            skip in 0usize..64,
        ) {
            let head = Head(w1, w2);
            // Unaligned starts too: a private copy's payload need not be.
            let body = &body[skip.min(body.len())..];
            let want = reference(&padded(head, body));
            for e in engines() {
                // SAFETY: `engines` lists what the CPU reported.
                prop_assert_eq!(!unsafe { raw(e, !0, head, body) }, want, "{:?}", e);
            }
            prop_assert_eq!(checksum(head, body), want);
        }

        #[test]
        fn copies_land_whole_and_sum_what_landed(
            w1 in any::<u64>(),
            w2 in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..3000),
            skip in 0usize..64,
        ) {
            let head = Head(w1, w2);
            let src = &body[skip.min(body.len())..];
            let want = checksum(head, src);
            // In, as a sender copies: whole words, the sum over all.
            let copy_len = src.len() / 8 * 8;
            let mut dst = vec![0u8; copy_len];
            // SAFETY: `dst` is a separate buffer of `copy_len` bytes.
            let sum = unsafe { copy_in(head, src, dst.as_mut_ptr(), copy_len) };
            prop_assert_eq!(&dst[..], &src[..copy_len]);
            prop_assert_eq!(sum, want);
            // Out of shared words, as a receiver copies a small frame.
            let words: Vec<AtomicU64> = src
                .chunks(8)
                .map(|c| {
                    let mut w = [0u8; 8];
                    w[..c.len()].copy_from_slice(c);
                    AtomicU64::new(u64::from_ne_bytes(w))
                })
                .collect();
            let mut out = vec![0xAAu8; words.len() * 8];
            let sum = copy_out_words(head, &words, &mut out);
            prop_assert_eq!(&out[..src.len()], src);
            prop_assert!(out[src.len()..].iter().all(|&b| b == 0));
            prop_assert_eq!(sum, want);
            // Out, as a receiver copies.
            let mut out = vec![0u8; src.len()];
            // SAFETY: `src` has `out.len()` bytes and is another buffer.
            let sum = unsafe { copy_out(head, src.as_ptr(), &mut out) };
            prop_assert_eq!(&out[..], src);
            prop_assert_eq!(sum, want);
        }
    }
}
