//! The template's machine code, moved into anonymous huge pages before its first fork.
//!
//! A fork copies page tables only where a process has anonymous memory: the executable's
//! code, mapped from its file, is left out, and every forked worker faulted its code back
//! in (59 of a worker's 137 page faults, each mapping 16 pages that its exit then unmapped
//! one by one: docs/BENCHMARKS.md). Here the template copies its code into anonymous
//! memory backed by 2 MiB pages and moves that over the file's mapping: a fork copies a
//! few entries that map all of it (the worker is linked so its code starts and ends on a
//! 2 MiB boundary: `build.rs`), and a worker neither faults its code in nor
//! unmaps it page by page. Measured per forked worker (template and worker CPU): about
//! 1.07 → 0.94 ms, 146 → 91 faults.
//!
//! Only with huge pages: in 4 KiB pages, a fork copying the entry of every page of the
//! code cost more than the faults it saved (1.46 ms a worker), so without them (THP off)
//! the copy is dropped and the file's mapping stays. The copy is never writable and
//! executable at once: written, made read-only and executable, then moved over the file's
//! mapping by one `mremap`. Every address keeps the same bytes, so code running during the
//! move (this module's own included) is not disturbed. Any step that fails leaves the
//! file's mapping as it was.
//!
//! The cost: the template's code is its own memory (about 7 MiB) rather than the page
//! cache's, shared by the forks; and `perf` sees the forks' code as anonymous memory.

use std::ffi::c_void;
use std::io;

const HUGE_PAGE: usize = 2 << 20;

/// What became of the code.
#[derive(Debug, PartialEq, Eq)]
pub enum Moved {
    /// `bytes` of code now in anonymous memory, `huge` of them in huge pages.
    Yes { bytes: usize, huge: usize },
    /// Left mapped from the file, and why.
    No(String),
}

/// Moves the executable's code mapping (the one holding this function) into anonymous
/// huge pages, if the kernel gives them. For a process that has one thread, as the
/// template must anyway.
pub fn move_code() -> Moved {
    let here = move_code as *const () as usize;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Moved::No("cannot read /proc/self/maps".into());
    };
    let Some((start, end)) = mapping_holding(&maps, here) else {
        return Moved::No("the code's mapping is not in /proc/self/maps".into());
    };
    let tail = through_free_tail(&maps, end);
    match move_into_huge_pages(start, end - start, tail - start) {
        Ok(huge) => Moved::Yes {
            bytes: end - start,
            huge,
        },
        Err(why) => Moved::No(why),
    }
}

/// Copies the `bytes` at `start` into anonymous memory of `len >= bytes` (zeros past
/// them) whose offset within a huge page matches, so that whole 2 MiB stretches can be
/// huge pages and `mremap` can move them as such, then moves the copy over
/// `[start, start + len)`. The bytes in huge pages.
fn move_into_huge_pages(start: usize, bytes: usize, len: usize) -> Result<usize, String> {
    // SAFETY: a fresh private anonymous mapping owned here; nothing else knows of it.
    let area = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + HUGE_PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if area == libc::MAP_FAILED {
        return Err(format!("mmap: {}", io::Error::last_os_error()));
    }
    let area = area as usize;
    let skew = (start % HUGE_PAGE + HUGE_PAGE - area % HUGE_PAGE) % HUGE_PAGE;
    let copy = area + skew;
    // SAFETY: the parts of `area` outside `[copy, copy + len)`, unused; then the copy of
    // `bytes` readable bytes at `start` (this process's code) into the rest.
    unsafe {
        if skew > 0 {
            libc::munmap(area as *mut c_void, skew);
        }
        libc::munmap((copy + len) as *mut c_void, HUGE_PAGE - skew);
        libc::madvise(copy as *mut c_void, len, libc::MADV_HUGEPAGE);
        std::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, bytes);
    }
    let drop_copy = |why: String| {
        // SAFETY: the copy, still this module's own.
        unsafe { libc::munmap(copy as *mut c_void, len) };
        Err(why)
    };
    let huge = huge_bytes_at(copy);
    if huge == 0 {
        return drop_copy("the kernel gave no huge pages (transparent huge pages off?)".into());
    }
    // SAFETY: the copy, now the same bytes as the code, made read-only and executable,
    // then moved over the code's mapping in one step.
    unsafe {
        if libc::mprotect(copy as *mut c_void, len, libc::PROT_READ | libc::PROT_EXEC) != 0 {
            return drop_copy(format!("mprotect: {}", io::Error::last_os_error()));
        }
        let moved = libc::mremap(
            copy as *mut c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            start as *mut c_void,
        );
        if moved == libc::MAP_FAILED {
            return drop_copy(format!("mremap: {}", io::Error::last_os_error()));
        }
    }
    Ok(huge_bytes_at(start))
}

/// The start and end of the mapping that holds `address`.
fn mapping_holding(maps: &str, address: usize) -> Option<(usize, usize)> {
    maps.lines()
        .filter_map(range_of)
        .find(|&(start, end)| start <= address && address < end)
}

/// The huge-page boundary at or after `end` when nothing is mapped between them, else
/// `end`. The worker is linked with its code alone between two 2 MiB boundaries
/// (`build.rs`): the copy then ends on one too, and its last 2 MiB are a huge page rather
/// than up to 511 small ones, each of which a fork copied and an exit unmapped.
fn through_free_tail(maps: &str, end: usize) -> usize {
    let boundary = end.next_multiple_of(HUGE_PAGE);
    let taken = maps
        .lines()
        .filter_map(range_of)
        .any(|(from, to)| from < boundary && to > end);
    if taken { end } else { boundary }
}

/// `AnonHugePages` of the mapping that starts at `start`, in bytes (0 if unknown).
fn huge_bytes_at(start: usize) -> usize {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return 0;
    };
    let mut inside = false;
    for line in smaps.lines() {
        if let Some((from, _)) = range_of(line) {
            inside = from == start;
        } else if inside && let Some(size) = line.strip_prefix("AnonHugePages:") {
            let kib = size.trim().trim_end_matches("kB").trim();
            return kib.parse::<usize>().map_or(0, |kib| kib * 1024);
        }
    }
    0
}

/// The address range a `/proc/self/maps` (or `smaps` header) line starts with.
fn range_of(line: &str) -> Option<(usize, usize)> {
    let (start, end) = line.split(' ').next()?.split_once('-')?;
    Some((
        usize::from_str_radix(start, 16).ok()?,
        usize::from_str_radix(end, 16).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copy_reaches_the_next_huge_page_boundary_only_over_unmapped_space() {
        let maps = "00600000-00d3f000 r-xp 00400000 fe:00 1   /usr/bin/x\n\
                    00e00000-00e83000 rw-p 00c00000 fe:00 1   /usr/bin/x\n";
        assert_eq!(through_free_tail(maps, 0xd3f000), 0xe00000);
        let close = "004f9000-00c6c000 r-xp 002f5000 fe:00 1   /usr/bin/x\n\
                     00c6c000-00cf0000 r--p 00a6a000 fe:00 1   /usr/bin/x\n";
        assert_eq!(through_free_tail(close, 0xc6c000), 0xc6c000);
        assert_eq!(through_free_tail(maps, 0xe00000), 0xe00000);
    }

    #[test]
    fn a_maps_line_gives_its_range_and_a_field_line_none() {
        assert_eq!(
            range_of("004f6000-00c66000 r-xp 002f5000 fe:00 5597947   /usr/bin/x"),
            Some((0x4f6000, 0xc66000))
        );
        assert_eq!(range_of("AnonHugePages:      6144 kB"), None);
        assert_eq!(range_of("VmFlags: rd ex mr mw me hg"), None);
    }

    /// Moves a mapping of this test's own (the test harness has threads, so not its
    /// code): the bytes stay, and it is in huge pages or left alone.
    #[test]
    fn a_moved_mapping_keeps_its_bytes() {
        let len = 3 * HUGE_PAGE;
        // SAFETY: a fresh private anonymous mapping for this test alone.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(at, libc::MAP_FAILED);
        let at = at as usize;
        // SAFETY: the mapping above, `len` bytes, readable and writable.
        let bytes = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, len) };
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let result = move_into_huge_pages(at, len, len);
        // SAFETY: the same range, still mapped (moved over, or left), now read-only.
        let after = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
        assert!(after.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
        match result {
            Ok(huge) => assert!(huge >= HUGE_PAGE, "{huge}"),
            Err(why) => assert!(why.contains("no huge pages"), "{why}"),
        }
        // SAFETY: the test's own mapping, unused from here.
        unsafe { libc::munmap(at as *mut c_void, len) };
    }
}
