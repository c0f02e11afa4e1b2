//! Process hardening and locked memory: the one module that calls into libc directly.
//!
//! Everything here runs before the runtime starts threads, so changing the environment is sound.
#![allow(unsafe_code)]

use std::io;

/// What [`harden_process`] could not do; printed as warnings once logging is up.
#[derive(Debug, Default)]
pub struct HardeningReport {
    pub failures: Vec<String>,
    pub removed_env: Vec<String>,
}

/// Turns off core dumps, makes the process non-dumpable (which also forbids `ptrace` and
/// `/proc/PID/mem` reads by other processes of the same user), and removes `LD_*` variables and
/// `OPENAI_API_KEY` from the environment. Call it first thing in `main`, before any thread exists.
pub fn harden_process() -> HardeningReport {
    let mut report = HardeningReport::default();

    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `setrlimit` reads the struct we pass by pointer; it lives for the whole call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        report.failures.push(format!(
            "could not disable core dumps (setrlimit RLIMIT_CORE): {}",
            io::Error::last_os_error()
        ));
    }

    // SAFETY: `prctl(PR_SET_DUMPABLE, 0)` takes plain integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        report.failures.push(format!(
            "could not mark the process non-dumpable (prctl PR_SET_DUMPABLE): {}",
            io::Error::last_os_error()
        ));
    }

    let doomed: Vec<_> = std::env::vars_os()
        .map(|(name, _)| name)
        .filter(|name| {
            let name = name.to_string_lossy();
            name.starts_with("LD_") || name == "OPENAI_API_KEY"
        })
        .collect();
    for name in doomed {
        // SAFETY: called from `main` before the runtime or any other thread exists, so no other
        // thread can be reading the environment concurrently.
        unsafe { std::env::remove_var(&name) };
        report.removed_env.push(name.to_string_lossy().into_owned());
    }
    report
}

/// Locks the pages holding `buf` into RAM so they are never written to swap.
pub fn lock_memory(buf: &[u8]) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    // SAFETY: the pointer and length describe memory we borrow for the call; `mlock` only
    // changes the pages' residency, never their contents.
    if unsafe { libc::mlock(buf.as_ptr().cast(), buf.len()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Undoes [`lock_memory`]; called after the buffer has been zeroized.
pub fn unlock_memory(buf: &[u8]) {
    if buf.is_empty() {
        return;
    }
    // SAFETY: as for `mlock`; unlocking memory we still own has no effect on its contents.
    unsafe { libc::munlock(buf.as_ptr().cast(), buf.len()) };
}

/// The effective user id of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: `geteuid` takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}
