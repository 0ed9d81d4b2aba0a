//! CPUs: affinity, the current CPU, CPU time and resident memory.
//!
//! A thread-per-core dataplane pins each worker to one CPU so that its caches, its NIC queue
//! and its memory stay local; [`pin_current_thread`] does that with `sched_setaffinity` on the
//! calling thread (tid 0). The benchmark harness compares Melange with a baseline by CPU time
//! and resident memory, so this module also reads both, for ourselves and for another process.
//!
//! CPU time of the calling thread and process comes from the per-thread and per-process CPU
//! clocks (`CLOCK_THREAD_CPUTIME_ID`, `CLOCK_PROCESS_CPUTIME_ID`), which have nanosecond
//! resolution. For another process the only unprivileged interface is `/proc/PID/stat`, in clock
//! ticks (usually 10 ms); `getrusage` was rejected because it only reports on ourselves and
//! reaped children. Memory comes from `/proc/PID/statm` (resident pages times the page size)
//! rather than `/proc/PID/status`, which is longer to parse and carries the same number.
//!
//! Safety contract: the unsafe operations are `sched_setaffinity` reading a `cpu_set_t` on our
//! stack, and `sched_getcpu`/`sysconf`, which take no pointers. Parsing `/proc` is safe code;
//! a malformed file is an [`std::io::ErrorKind::InvalidData`] error wrapping a [`ProcError`],
//! never a panic.

use std::io;
use std::mem;

use crate::clock::{clock_ns, NS_PER_S};

/// Why a `/proc` file could not be interpreted.
///
/// Returned inside an [`io::Error`] of kind [`io::ErrorKind::InvalidData`]; get it back with
/// [`io::Error::get_ref`] and `downcast_ref`.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file did not have the expected field. The kernel format is stable, so this means the
    /// file was not what we think (a non-Linux `/proc`, or a race with process exit that left a
    /// partial read). The caller should treat the measurement as unavailable.
    #[error("{path}: field {field} missing or not a number")]
    Field {
        /// The file that was read.
        path: String,
        /// The 1-based field number, as in `proc(5)`.
        field: usize,
    },
}

/// Pins the calling thread to CPU `cpu` (0-based, as in `/proc/cpuinfo`).
///
/// # Errors
///
/// [`io::ErrorKind::InvalidInput`] if `cpu` is not below `CPU_SETSIZE` (1024), and the
/// `sched_setaffinity` error otherwise: `EINVAL` if `cpu` is offline or outside this process's
/// cpuset (containers often restrict it). The caller should pick another CPU or run unpinned.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    pin_thread(0, cpu)
}

/// Pins thread `tid` (a thread id as in `/proc/PID/task`, or a kernel thread's pid, such as a
/// threaded NAPI poller's) to CPU `cpu`; `tid` 0 is the calling thread.
///
/// # Errors
///
/// As for [`pin_current_thread`], and `ESRCH` if there is no such thread, `EPERM` without the
/// privilege to change another user's thread (`CAP_SYS_NICE`), `EINVAL` for a kernel thread
/// that may not move.
pub fn pin_thread(tid: u32, cpu: usize) -> io::Result<()> {
    let setsize = libc::CPU_SETSIZE as usize;
    if cpu >= setsize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("cpu {cpu} is not below CPU_SETSIZE {setsize}"),
        ));
    }
    let tid = libc::pid_t::try_from(tid).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("thread id {tid} is out of range"),
        )
    })?;
    // SAFETY: `cpu_set_t` is a plain array of integers; all-zero is the valid empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    // SAFETY: `CPU_SET` writes bit `cpu` of `set`; `cpu < CPU_SETSIZE` was checked above, so
    // the bit lies inside the array.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a live, initialised `cpu_set_t` on our stack and we pass its exact size;
    // the kernel only reads it.
    syscall!(unsafe { libc::sched_setaffinity(tid, mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}

/// Makes thread `tid` a real-time thread: `SCHED_FIFO` at `priority` (1-99), so that it runs
/// as soon as it is woken, ahead of every ordinary thread on its core, the way an interrupt
/// handler preempts whatever runs there (PREEMPT_RT kernels run threaded interrupt handlers
/// at `SCHED_FIFO` 50).
///
/// # Errors
///
/// `InvalidInput` for a priority outside 1-99 or a thread id out of range; `EPERM` without
/// `CAP_SYS_NICE`; `ESRCH` if there is no such thread.
pub fn set_fifo_priority(tid: u32, priority: i32) -> io::Result<()> {
    if !(1..=99).contains(&priority) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("SCHED_FIFO priority {priority} is not in 1..=99"),
        ));
    }
    let tid = libc::pid_t::try_from(tid).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("thread id {tid} is out of range"),
        )
    })?;
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: `param` is a live, initialised `sched_param` on our stack; the kernel only
    // reads it.
    syscall!(unsafe { libc::sched_setscheduler(tid, libc::SCHED_FIFO, &param) })?;
    Ok(())
}

/// The number of CPUs currently online (`sysconf(_SC_NPROCESSORS_ONLN)`), at least 1.
///
/// This counts the machine, not this process's affinity mask; a container may be allowed fewer.
pub fn online_cpus() -> usize {
    sysconf(libc::_SC_NPROCESSORS_ONLN).map_or(1, |n| n.max(1) as usize)
}

/// The CPU the calling thread is running on right now (`sched_getcpu`), or `None` if the
/// kernel cannot tell.
///
/// The answer may be stale by the time it is used unless the thread is pinned.
pub fn current_cpu() -> Option<usize> {
    // SAFETY: `sched_getcpu` takes no arguments and touches no caller memory.
    let cpu = syscall!(unsafe { libc::sched_getcpu() }).ok()?;
    usize::try_from(cpu).ok()
}

/// CPU time (user plus system) consumed by the calling thread, in nanoseconds.
pub fn thread_cpu_time_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time (user plus system) consumed by all threads of this process, in nanoseconds.
pub fn process_cpu_time_ns() -> u64 {
    clock_ns(libc::CLOCK_PROCESS_CPUTIME_ID)
}

/// CPU time (user plus system, `utime + stime`) consumed by process `pid`, in nanoseconds,
/// read from `/proc/PID/stat`.
///
/// Resolution is one clock tick (`sysconf(_SC_CLK_TCK)`, usually 10 ms). Children are not
/// included.
///
/// # Errors
///
/// `NotFound` if the process does not exist (or has exited), and `InvalidData` wrapping a
/// [`ProcError`] if the file cannot be parsed.
pub fn process_cpu_time_of(pid: u32) -> io::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)?;
    let ticks = parse_stat_cpu_ticks(&text).map_err(|field| proc_error(&path, field))?;
    let ticks_per_s = clock_ticks_per_s()?;
    Ok(ticks_to_ns(ticks, ticks_per_s))
}

/// Resident memory of the calling process in bytes, from `/proc/self/statm`.
///
/// # Errors
///
/// As for [`rss_bytes_of`].
pub fn rss_bytes() -> io::Result<u64> {
    rss_bytes_from("/proc/self/statm")
}

/// Resident memory of process `pid` in bytes: resident pages from `/proc/PID/statm` times the
/// page size.
///
/// # Errors
///
/// `NotFound` if the process does not exist, `InvalidData` wrapping a [`ProcError`] if the file
/// cannot be parsed.
pub fn rss_bytes_of(pid: u32) -> io::Result<u64> {
    rss_bytes_from(&format!("/proc/{pid}/statm"))
}

fn rss_bytes_from(path: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    // proc(5): statm is "size resident shared text lib data dt", in pages.
    let pages = nth_number(text.split_ascii_whitespace(), 1).ok_or_else(|| proc_error(path, 2))?;
    Ok(pages.saturating_mul(page_size_bytes()?))
}

/// Extracts `utime + stime` (fields 14 and 15 of proc(5)) from the text of `/proc/PID/stat`.
///
/// Field 2, `comm`, is in parentheses and may contain spaces and parentheses itself, so the
/// fields after it are counted from the *last* `)`. Returns the missing field number on error.
fn parse_stat_cpu_ticks(text: &str) -> Result<u64, usize> {
    let after_comm = text.rfind(')').map(|i| &text[i + 1..]).ok_or(2_usize)?;
    // The first field after `comm` is field 3 (`state`), so field N is at index N - 3.
    let utime = nth_number(after_comm.split_ascii_whitespace(), 14 - 3).ok_or(14_usize)?;
    let stime = nth_number(after_comm.split_ascii_whitespace(), 15 - 3).ok_or(15_usize)?;
    Ok(utime.saturating_add(stime))
}

fn nth_number<'a>(mut fields: impl Iterator<Item = &'a str>, index: usize) -> Option<u64> {
    fields.nth(index)?.parse().ok()
}

fn ticks_to_ns(ticks: u64, ticks_per_s: u64) -> u64 {
    // u128 so that neither the product nor a large tick count can overflow.
    let ns = u128::from(ticks) * u128::from(NS_PER_S) / u128::from(ticks_per_s.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

fn proc_error(path: &str, field: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        ProcError::Field {
            path: path.to_owned(),
            field,
        },
    )
}

fn clock_ticks_per_s() -> io::Result<u64> {
    sysconf(libc::_SC_CLK_TCK).map(|n| n.max(1) as u64)
}

/// The size of a normal page in bytes.
pub(crate) fn page_size_bytes() -> io::Result<u64> {
    sysconf(libc::_SC_PAGESIZE).map(|n| n.max(1) as u64)
}

/// `sysconf(name)`, with "unsupported" (-1 without errno) reported as an error too.
fn sysconf(name: libc::c_int) -> io::Result<libc::c_long> {
    // SAFETY: `sysconf` takes an integer and touches no caller memory.
    syscall!(unsafe { libc::sysconf(name) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_then_current_cpu() {
        // This runs on a test-harness thread that exits afterwards, so the pin does not leak.
        pin_current_thread(0).expect("CPU 0 is online and allowed on the test machine");
        assert_eq!(current_cpu(), Some(0));
    }

    #[test]
    fn pin_out_of_range_is_invalid_input() {
        let err = pin_current_thread(1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn online_cpus_is_positive() {
        assert!(online_cpus() >= 1);
        assert!(current_cpu().is_some_and(|c| c < libc::CPU_SETSIZE as usize));
    }

    fn busy_loop_ms(ms: u64) -> u64 {
        let start = crate::monotonic_ns();
        let mut x = 0_u64;
        while crate::monotonic_ns() - start < ms * 1_000_000 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        x
    }

    #[test]
    fn thread_cpu_time_increases_after_busy_loop() {
        let before = thread_cpu_time_ns();
        let process_before = process_cpu_time_ns();
        // Spin 20 ms of wall time. On a loaded machine we may get little of it, so keep spinning
        // (up to 5 s) until at least 1 ms of CPU time has been charged to this thread.
        busy_loop_ms(20);
        let deadline = crate::monotonic_ns() + 5_000_000_000;
        while thread_cpu_time_ns() - before < 1_000_000 && crate::monotonic_ns() < deadline {
            busy_loop_ms(1);
        }
        let spent = thread_cpu_time_ns() - before;
        assert!(spent >= 1_000_000, "busy loop charged only {spent} ns");
        assert!(process_cpu_time_ns() - process_before >= spent);
    }

    #[test]
    fn process_cpu_time_of_self() {
        busy_loop_ms(30);
        let ns = process_cpu_time_of(std::process::id()).unwrap();
        assert!(ns > 0);
        // /proc has tick resolution, the clock has ns; /proc can only be behind, by a tick or so.
        assert!(ns <= process_cpu_time_ns() + 20_000_000);
    }

    #[test]
    fn process_cpu_time_of_missing_pid() {
        // Above the kernel's pid_max limit (4 Mi), so it cannot exist.
        let err = process_cpu_time_of(u32::MAX).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn rss_is_positive() {
        let rss = rss_bytes().unwrap();
        assert!(rss > 0);
        assert_eq!(rss % page_size_bytes().unwrap(), 0);
        assert!(rss_bytes_of(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn stat_parsing_handles_hostile_comm() {
        // comm with spaces and a ')' inside; utime = 1234, stime = 66.
        let text = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 1234 66 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_stat_cpu_ticks(text), Ok(1300));
        assert_eq!(parse_stat_cpu_ticks("42 (x) S 1 2"), Err(14));
        assert_eq!(parse_stat_cpu_ticks("garbage"), Err(2));
        assert_eq!(ticks_to_ns(150, 100), 1_500_000_000);
    }

    #[test]
    fn proc_error_is_typed() {
        let err = proc_error("/proc/1/stat", 14);
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let inner = err.get_ref().and_then(|e| e.downcast_ref::<ProcError>());
        assert!(matches!(inner, Some(ProcError::Field { field: 14, .. })));
    }
}
