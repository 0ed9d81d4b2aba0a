//! Secret randomness from the kernel: `getrandom(2)`, for the keys of TCP's connection table,
//! initial sequence numbers, SYN cookies and port choice.
//!
//! Why the system call and not a userspace generator seeded once: the keys must be
//! unpredictable to a peer (RFC 6528 §3, RFC 4987), so they come from the kernel's CSPRNG,
//! which is seeded from hardware entropy before userspace runs. Reading is done at start-up,
//! never on the data path.

use std::io;

/// Fills `buf` with random bytes from the kernel's CSPRNG (blocking only until the pool is
/// first initialised at boot).
pub fn fill(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live, writable slice; flags 0 asks
        // for the urandom source, which never returns fewer bytes than asked for requests up
        // to 256 bytes, and otherwise returns a positive count we advance by.
        let n = syscall!(unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) });
        match n {
            Ok(n) => done += n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `N` random bytes.
pub fn bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut out = [0u8; N];
    fill(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_reads_differ_and_fill_everything() {
        let a: [u8; 80] = bytes().unwrap();
        let b: [u8; 80] = bytes().unwrap();
        assert_ne!(a, b, "80 random bytes repeated");
        // With 80 bytes, the chance that any 8-byte word is all zero by chance is negligible.
        assert!(a.chunks(8).all(|w| w.iter().any(|&x| x != 0)));
    }
}
