//! Filling cache files: page-aligned writes of a blob's bytes, readahead that skips cached chunks.
//!
//! Front-end neutral: it writes through whatever fd the front end gives the object (the
//! cachefiles anon fd; for a fanotify front end, the blob's sparse file).

use super::sources::Blob;
use nix::errno::Errno;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const PAGE: u64 = 4096;
/// Data moves through the fd in chunks of this size (whole pages, page aligned).
const CHUNK: usize = 1 << 20;

/// A page-aligned page: the kernel writes the anon fd with O_DIRECT.
#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// Fetches `[off, off+len)` plus readahead and writes it into `fd` in whole pages from
/// page-aligned offsets (the kernel refuses unaligned starts with ENOBUFS), zero-padding the
/// blob's tail. Returns the bytes written.
pub fn serve_read(
    blob: &dyn Blob,
    fd: impl AsFd,
    off: u64,
    len: u64,
    readahead: u64,
) -> Result<u64, String> {
    let size = blob.size();
    let start = off / PAGE * PAGE;
    let padded_size = size.div_ceil(PAGE) * PAGE;
    let end = off
        .saturating_add(len)
        .saturating_add(readahead)
        .div_ceil(PAGE)
        .saturating_mul(PAGE)
        .min(padded_size);
    if start >= end {
        return Ok(0);
    }
    thread_local! {
        /// One chunk per worker thread, reused: no page-aligned allocation (which glibc always
        /// serves with mmap + munmap) and no zero-filling per READ.
        static PAGES: std::cell::RefCell<Vec<Page>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Chunks wholly past the asked range are readahead: skipped when already cached.
    let asked_end = off.saturating_add(len);
    let fd = fd.as_fd();
    PAGES.with_borrow_mut(|pages| serve_chunks(blob, fd, start, end, asked_end, pages))
}

/// Whether `[pos, pos+n)` of the cache file holds data throughout. The anon fd passes
/// SEEK_HOLE through to the backing file; any error just means "write it".
pub(super) fn already_cached(fd: BorrowedFd<'_>, pos: u64, n: u64) -> bool {
    matches!(
        nix::unistd::lseek(fd.as_raw_fd(), pos as i64, nix::unistd::Whence::SeekHole),
        Ok(hole) if hole as u64 >= pos + n
    )
}

fn serve_chunks(
    blob: &dyn Blob,
    fd: BorrowedFd<'_>,
    start: u64,
    end: u64,
    asked_end: u64,
    pages: &mut Vec<Page>,
) -> Result<u64, String> {
    let size = blob.size();
    let want = (CHUNK as u64).min(end - start).div_ceil(PAGE) as usize;
    if pages.len() < want {
        pages.resize(want, Page([0; 4096]));
    }
    // Into a regular file (the fanotify front end's blob file) the source may move its bytes
    // itself (`Blob::copy_to`: a splice, one copy in the kernel instead of two through our
    // buffer). Never into the cachefiles anon fd, which the kernel writes with O_DIRECT.
    let mut direct = is_regular_file(fd);
    let mut pos = start;
    let mut written = 0;
    while pos < end {
        let n = (end - pos).min(CHUNK as u64) as usize;
        if pos >= asked_end && already_cached(fd, pos, n as u64) {
            pos += n as u64;
            continue;
        }
        let buf = &mut pages.as_mut_bytes()[..n];
        let data = (size.saturating_sub(pos) as usize).min(n);
        let copied = if direct {
            blob.copy_to(pos, data, fd, pos)
        } else {
            None
        };
        match copied {
            Some(result) => {
                result.map_err(|e| e.to_string())?;
                // Past the blob's end the page is zeros, as the path through memory writes it.
                buf[data..].fill(0);
                write_all_at(fd, &buf[data..], pos + data as u64)?;
            }
            None => {
                direct = false;
                blob.read_exact_at(pos, &mut buf[..data])
                    .map_err(|e| e.to_string())?;
                buf[data..].fill(0);
                write_all_at(fd, buf, pos)?;
            }
        }
        written += n as u64;
        pos += n as u64;
    }
    Ok(written)
}

fn is_regular_file(fd: BorrowedFd<'_>) -> bool {
    use nix::sys::stat::{fstat, SFlag};
    fstat(fd.as_raw_fd()).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
    })
}

/// Writes all of `buf` at `at`.
fn write_all_at(fd: BorrowedFd<'_>, buf: &[u8], at: u64) -> Result<(), String> {
    let mut done = 0;
    while done < buf.len() {
        let pos = at + done as u64;
        match nix::sys::uio::pwrite(fd, &buf[done..], pos as i64) {
            Ok(0) => return Err(format!("writing at {pos}: no progress")),
            Ok(w) => done += w,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(format!("writing the cache at {pos}: {e}")),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_blob_tail_is_padded_with_zeros_whichever_way_its_bytes_move() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let size: usize = (2 << 20) + 1000;
        let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8 + 1).collect();
        std::fs::write(dir.path().join("blob"), &data).unwrap();
        let blob = super::super::sources::LocalBlob::open(dir.path().join("blob")).unwrap();
        let padded = size.div_ceil(4096) * 4096;
        // Spliced by the local blob, and through memory by a blob that cannot splice.
        struct NoSplice(super::super::sources::LocalBlob);
        impl super::super::sources::Blob for NoSplice {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn read_exact_at(
                &self,
                off: u64,
                buf: &mut [u8],
            ) -> Result<(), super::super::sources::FetchError> {
                self.0.read_exact_at(off, buf)
            }
            fn describe(&self) -> String {
                self.0.describe()
            }
            fn is_remote(&self) -> bool {
                false
            }
        }
        let other =
            NoSplice(super::super::sources::LocalBlob::open(dir.path().join("blob")).unwrap());
        let blobs: [&dyn super::super::sources::Blob; 2] = [&blob, &other];
        for (i, b) in blobs.into_iter().enumerate() {
            let cache = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(dir.path().join(format!("cache{i}")))
                .unwrap();
            // Garbage where the padding goes: the fill must overwrite it.
            cache
                .write_all_at(&vec![0xeeu8; 8192], padded as u64 - 8192)
                .unwrap();
            let fd: std::os::fd::OwnedFd = cache.try_clone().unwrap().into();
            let written = super::serve_read(b, &fd, 4096, 100, 4 << 20).unwrap();
            assert_eq!(written, padded as u64 - 4096);
            let mut back = vec![0u8; padded - 4096];
            cache.read_exact_at(&mut back, 4096).unwrap();
            assert!(
                back[..size - 4096] == data[4096..],
                "way {i}: the blob's bytes"
            );
            assert!(
                back[size - 4096..].iter().all(|&b| b == 0),
                "way {i}: the padding"
            );
        }
    }

    #[test]
    fn readahead_skips_chunks_already_cached() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("blob");
        std::fs::write(&src, vec![7u8; 4 << 20]).unwrap();
        let blob = super::super::sources::LocalBlob::open(src).unwrap();
        let cache = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(dir.path().join("cache"))
            .unwrap();
        cache.set_len(4 << 20).unwrap();
        // The third MiB is already cached (marked 9s); the rest is a hole.
        cache.write_all_at(&vec![9u8; 1 << 20], 2 << 20).unwrap();
        let fd: std::os::fd::OwnedFd = cache.try_clone().unwrap().into();
        // Ask for 4 KiB at 0 with 3 MiB of readahead: chunks 0, 1 and 3 are written, 2 skipped.
        let written = super::serve_read(&blob, &fd, 0, 4096, 3 << 20).unwrap();
        assert_eq!(written, (2 << 20) + 4096);
        let mut back = vec![0u8; 4 << 20];
        cache.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..2 << 20].iter().all(|&b| b == 7));
        assert!(
            back[2 << 20..3 << 20].iter().all(|&b| b == 9),
            "cached chunk rewritten"
        );
        assert!(back[3 << 20..(3 << 20) + 4096].iter().all(|&b| b == 7));
    }
}
