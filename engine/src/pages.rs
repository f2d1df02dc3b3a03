//! Buffers for weights, which Linux is asked to back with transparent huge pages.
//!
//! A decode step streams every weight once; with 4 KiB pages it pays a TLB miss and a page
//! walk per 4 KiB, where llama.cpp's weights, `mmap`ed from the page cache, sit in large
//! folios. The system's THP setting is commonly `madvise`, so each buffer asks for them
//! (`MADV_HUGEPAGE`) before its first write; where they are off or unavailable this changes
//! nothing. Measured in `docs/engine.md` ("Weights on huge pages").

/// An empty buffer with room for `len` items, advised before anything is written to it.
pub(crate) fn with_capacity<T>(len: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    advise(v.as_mut_ptr().cast::<u8>(), len * size_of::<T>());
    v
}

/// `len` zeros in a new advised buffer (one fill, not an element at a time).
pub(crate) fn zeroed<T: Clone + Default>(len: usize) -> Vec<T> {
    let mut v = with_capacity(len);
    v.resize(len, T::default());
    v
}

/// A copy of `v` in a new advised buffer.
pub(crate) fn copy<T: Copy>(v: &[T]) -> Vec<T> {
    let mut out = with_capacity(v.len());
    out.extend_from_slice(v);
    out
}

/// `madvise(MADV_HUGEPAGE)` on the whole 4 KiB pages inside `bytes` bytes at `p`, a buffer
/// the caller owns and has not written yet; at least one 2 MiB page's worth, else nothing.
#[cfg(target_os = "linux")]
#[expect(unsafe_code, reason = "madvise on memory this buffer owns")]
fn advise(p: *mut u8, bytes: usize) {
    const PAGE: usize = 4096;
    const HUGE: usize = 2 << 20;
    let start = (p as usize).next_multiple_of(PAGE);
    let end = (p as usize + bytes) & !(PAGE - 1);
    if end < start + HUGE {
        return;
    }
    // SAFETY: `start..end` lies inside the caller's allocation; MADV_HUGEPAGE changes how the
    // kernel backs those pages, never what they hold. A failure (THP disabled) changes nothing
    // either, so its result is ignored.
    let _ = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
}

#[cfg(not(target_os = "linux"))]
fn advise(_: *mut u8, _: usize) {}
