//! Signals to other processes.
//!
//! The benchmark harness starts servers as child processes and stops them with `SIGTERM`, so
//! that they print their counters and unwind (the standard library only offers `SIGKILL`).
//!
//! Safety contract: `kill` takes no pointers; the only hazard is signalling the wrong process,
//! which the caller avoids by passing the pid of a child it has not yet reaped.

use std::io;

/// Sends `SIGTERM` to process `pid`.
pub fn terminate(pid: u32) -> io::Result<()> {
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    syscall!(unsafe { libc::kill(pid, libc::SIGTERM) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
