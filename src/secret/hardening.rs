//! Process hardening and locked memory: the one module that calls into libc directly.
//!
//! Everything here runs before the runtime starts threads, so changing the environment is sound.
#![allow(unsafe_code)]

use std::io;

/// What [`harden_process`] did and could not do; reported once logging is up.
#[derive(Debug)]
pub struct HardeningReport {
    pub failures: Vec<String>,
    pub removed_env: Vec<String>,
    pub memory: MemoryLock,
    /// The open-file limit after raising it.
    pub open_files: u64,
}

/// Whether all of keyward's memory is locked against swapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryLock {
    /// Every page, present and future: no copy of a secret (HTTP and TLS buffers included) can
    /// be written to swap.
    All,
    /// Only the secret's own buffer is locked; transient copies in HTTP buffers could be
    /// swapped. The string says why the rest is not locked.
    SecretOnly(String),
}

/// Turns off core dumps, makes the process non-dumpable (which also forbids `ptrace` and
/// `/proc/PID/mem` reads by other processes of the same user), and removes `LD_*` variables and
/// `OPENAI_API_KEY` from the environment. Call it first thing in `main`, before any thread exists.
pub fn harden_process() -> HardeningReport {
    let mut report = HardeningReport {
        failures: Vec::new(),
        removed_env: Vec::new(),
        memory: lock_all_memory(),
        open_files: raise_open_files(),
    };

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

    scrub_environment(&mut report.removed_env);
    report
}

/// Removes `LD_*` variables and `OPENAI_API_KEY` from the environment, and wipes the key's bytes
/// where the kernel put them at exec (the stack's environment block, which is what
/// `/proc/PID/environ` shows): after this, neither that file nor a scan of keyward's memory finds
/// the key. Values are never copied out: the entries are read in place.
fn scrub_environment(removed: &mut Vec<String>) {
    use std::os::unix::ffi::OsStrExt;
    use zeroize::Zeroize;

    let mut doomed = Vec::new();
    // SAFETY: called from `main` before any other thread exists, so nothing changes `environ`
    // meanwhile; it is a NULL-terminated array of pointers to NUL-terminated strings, each
    // valid for reading.
    unsafe {
        let mut entry = libc::environ;
        while !entry.is_null() && !(*entry).is_null() {
            let text = *entry;
            let bytes = std::ffi::CStr::from_ptr(text).to_bytes();
            let name = bytes.split(|&b| b == b'=').next().unwrap_or_default();
            if name.starts_with(b"LD_") || name == b"OPENAI_API_KEY" {
                doomed.push((name.to_vec(), text, bytes.len()));
            }
            entry = entry.add(1);
        }
    }
    for (name, text, len) in doomed {
        let name = std::ffi::OsStr::from_bytes(&name).to_owned();
        // SAFETY: no other thread exists yet (see above).
        unsafe { std::env::remove_var(&name) };
        if name == "OPENAI_API_KEY" {
            // SAFETY: `text` points at `len` bytes of the entry, still valid after `unsetenv`
            // (it only drops the pointer from `environ`) and writable: the kernel's block on the
            // stack, or memory `setenv` allocated. Nothing refers to it any more.
            let entry = unsafe { std::slice::from_raw_parts_mut(text.cast::<u8>(), len) };
            entry.zeroize();
        }
        removed.push(name.to_string_lossy().into_owned());
    }
}

/// Locks every page of the process, now and later, when that cannot make allocations fail: the
/// memlock limit is unlimited or the process holds `CAP_IPC_LOCK` (root does). Under a finite
/// limit, locking all future memory would turn heavy load into allocation failures, so keyward
/// then locks only the secret itself.
fn lock_all_memory() -> MemoryLock {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes into the struct we pass, which lives for the whole call.
    let unlimited = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0
        && limit.rlim_cur == libc::RLIM_INFINITY;
    if !unlimited && !has_cap_ipc_lock() {
        return MemoryLock::SecretOnly(
            "the memlock limit is finite and keyward lacks CAP_IPC_LOCK (run as root, or with \
             LimitMEMLOCK=infinity under systemd)"
                .into(),
        );
    }
    // MCL_ONFAULT locks pages as they are first touched, so reserved but unused memory (thread
    // stacks, allocator arenas) costs nothing.
    let flags = libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT;
    // SAFETY: `mlockall` takes flags only and changes no memory contents.
    if unsafe { libc::mlockall(flags) } == 0 {
        MemoryLock::All
    } else {
        MemoryLock::SecretOnly(format!("mlockall failed: {}", io::Error::last_os_error()))
    }
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let hex = status
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_owned();
            u64::from_str_radix(&hex, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Raises the open-file limit to its hard ceiling: a proxy holds two sockets per stream, and the
/// common default of 1,024 would stop keyward at about 500 concurrent streams. Returns the
/// limit now in force.
pub fn raise_open_files() -> u64 {
    let Some(limit) = nofile() else {
        return 0;
    };
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: `setrlimit` reads the struct we pass; lowering or raising the soft limit up to
        // the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    limit.rlim_cur
}

/// The open-file limit in force (0 when it cannot be read).
pub fn open_files_limit() -> u64 {
    nofile().map_or(0, |limit| limit.rlim_cur)
}

fn nofile() -> Option<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `getrlimit` writes into the struct we pass, which lives for the whole call.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit)
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

/// For tests: a global allocator that notices memory freed while it still holds a given
/// canary, so a test can see that a secret was wiped before its memory went back.
#[cfg(test)]
pub mod freed_watch {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    static CANARY: AtomicPtr<u8> = AtomicPtr::new(std::ptr::null_mut());
    static CANARY_LEN: AtomicUsize = AtomicUsize::new(0);
    static HITS: AtomicUsize = AtomicUsize::new(0);

    struct Watcher;

    // SAFETY: every call is passed to the system allocator unchanged; `dealloc` only reads the
    // block it is given (still owned until `System.dealloc`) before passing it on.
    unsafe impl GlobalAlloc for Watcher {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: as the caller's contract.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            let canary = CANARY.load(Ordering::Acquire);
            let len = CANARY_LEN.load(Ordering::Acquire);
            if !canary.is_null() && len > 0 && layout.size() >= len {
                // SAFETY: `ptr` is a live block of `layout.size()` bytes until the dealloc
                // below; the canary is a `'static` byte string of `len` bytes.
                let (block, canary) = unsafe {
                    (
                        std::slice::from_raw_parts(ptr, layout.size()),
                        std::slice::from_raw_parts(canary, len),
                    )
                };
                if block.windows(len).any(|w| w == canary) {
                    HITS.fetch_add(1, Ordering::Relaxed);
                }
            }
            // SAFETY: as the caller's contract.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    #[global_allocator]
    static WATCHER: Watcher = Watcher;

    /// Starts counting freed blocks that hold `canary`.
    pub fn watch(canary: &'static [u8]) {
        HITS.store(0, Ordering::Relaxed);
        CANARY_LEN.store(canary.len(), Ordering::Release);
        CANARY.store(canary.as_ptr().cast_mut(), Ordering::Release);
    }

    /// How many freed blocks held the canary since [`watch`].
    pub fn hits() -> usize {
        HITS.load(Ordering::Relaxed)
    }
}
