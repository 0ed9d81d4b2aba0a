//! Signals to other processes, and this process' limit on open files.
//!
//! The benchmark harness starts servers as child processes and stops them with `SIGTERM`, so
//! that they print their counters and unwind (the standard library only offers `SIGKILL`).
//! A server on kernel sockets needs a descriptor per client; like redis-server, it raises its
//! own soft `RLIMIT_NOFILE` toward the hard limit at start rather than failing accepts later.
//!
//! Safety contract: `kill` takes no pointers; the only hazard is signalling the wrong process,
//! which the caller avoids by passing the pid of a child it has not yet reaped. `getrlimit`
//! and `setrlimit` are given a live `rlimit` on the stack.

use std::io;

/// Sends `SIGTERM` to process `pid`.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    syscall!(unsafe { libc::kill(pid, libc::SIGTERM) })?;
    Ok(())
}

/// The limit on open files, `(soft, hard)`; `u64::MAX` means unlimited.
///
/// # Errors
///
/// Only if `getrlimit` fails, which it cannot for a valid resource.
pub fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a live, writable `rlimit` on our stack.
    syscall!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    Ok((limit.rlim_cur, limit.rlim_max))
}

/// Raises the soft limit on open files to `wanted`, or to the hard limit if that is lower
/// (never lowers it), and returns the soft limit now in force.
///
/// # Errors
///
/// If `getrlimit` or `setrlimit` fails; the limit is then unchanged.
pub fn raise_open_files_limit(wanted: u64) -> io::Result<u64> {
    let (soft, hard) = open_files_limit()?;
    let target = wanted.min(hard);
    if target <= soft {
        return Ok(soft);
    }
    let limit = libc::rlimit {
        rlim_cur: target,
        rlim_max: hard,
    };
    // SAFETY: `limit` is a live `rlimit` on our stack; setrlimit only reads it.
    syscall!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_within_the_hard_limit_and_never_lowered() {
        let (soft, hard) = open_files_limit().unwrap();
        assert!(soft <= hard);
        // Asking for less than the soft limit leaves it.
        assert_eq!(
            raise_open_files_limit(soft.saturating_sub(1)).unwrap(),
            soft
        );
        // Asking for more than the hard limit stops at the hard limit.
        let now = raise_open_files_limit(u64::MAX).unwrap();
        assert_eq!(now, hard);
        assert_eq!(open_files_limit().unwrap(), (hard, hard));
    }

    #[test]
    fn terminates_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        terminate(child.id()).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
    }
}
