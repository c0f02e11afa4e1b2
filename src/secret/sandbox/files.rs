//! What keyward may open on disk once it serves: a Landlock ruleset put on every thread of the
//! process. Reading is allowed where keyward reads (the system's name-service, DNS and time-zone
//! files in `/etc`, shared libraries the name service loads, its own `/proc` entry, and what the
//! configuration names); writing only where the configuration says keyward writes; running a
//! program nowhere; binding a new TCP port never.
//!
//! Landlock restricts the thread that asks and the threads it creates later. keyward already runs
//! several threads when it is ready to be confined, and the kernels of today (Landlock ABI 7 and
//! below) cannot restrict a whole process at once, so every other thread is asked, by a signal,
//! to put the same ruleset on itself; the caller does so last. A thread started while that goes
//! on is caught by the next look at `/proc/self/task`; the caller returns once every thread has
//! answered.
#![allow(unsafe_code)]

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, Ruleset, RulesetAttr, RulesetCreatedAttr,
    path_beneath_rules,
};

use super::SandboxError;

/// The places keyward may use on disk once it serves, as the configuration names them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Read (files, or everything beneath a directory).
    pub read: Vec<PathBuf>,
    /// Read, write, create and remove beneath (directories keyward keeps its files in).
    pub write: Vec<PathBuf>,
    /// Only remove files beneath (the directory of a unix socket keyward removes at exit).
    pub remove: Vec<PathBuf>,
}

/// Read by every keyward: the name service (users and groups of peers), DNS, the time zone, and
/// the libraries the name service loads. All of `/etc` rather than its files one by one: a DHCP
/// client or a network manager replaces `/etc/resolv.conf` with a new file at any time, and a
/// rule on the old file would not follow it.
pub const SYSTEM_READ: &[&str] = &[
    "/etc",
    "/usr/lib",
    "/usr/lib64",
    "/lib",
    "/lib64",
    "/proc/self",
    "/proc/sys/kernel/hostname",
    // systemd-resolved's files, where /etc/resolv.conf points on most systems.
    "/run/systemd/resolve",
];

/// The newest Landlock ABI whose file rights keyward asks for; older kernels enforce what they
/// know (best effort), a kernel without Landlock enforces nothing (the caller warns).
const FILES_ABI: ABI = ABI::V5;

/// How far the file rules hold on this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enforced {
    /// Every thread is confined; the kernel's Landlock ABI version.
    Yes(i32),
    /// The kernel has no Landlock (too old, or not enabled at boot).
    NoLandlock,
}

/// The kernel's Landlock ABI version, 0 without Landlock.
pub fn abi_version() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a null attribute, size 0 and the version flag the call only returns a number.
    let version = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(version).unwrap_or(0).max(0)
}

/// Confines every thread of the process to `paths` (and [`SYSTEM_READ`]), for good.
pub fn restrict(paths: &Paths) -> Result<Enforced, SandboxError> {
    let version = abi_version();
    if version == 0 {
        return Ok(Enforced::NoLandlock);
    }
    let ruleset = build(paths).map_err(|err| SandboxError::Files(err.to_string()))?;
    let Some(fd) = Option::<OwnedFd>::from(ruleset) else {
        return Ok(Enforced::NoLandlock);
    };
    every_thread(&fd)?;
    Ok(Enforced::Yes(version))
}

fn read_rights() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

fn write_rights() -> BitFlags<AccessFs> {
    read_rights()
        | AccessFs::WriteFile
        | AccessFs::Truncate
        | AccessFs::MakeReg
        | AccessFs::MakeDir
        | AccessFs::RemoveFile
        | AccessFs::RemoveDir
}

fn build(paths: &Paths) -> Result<landlock::RulesetCreated, landlock::RulesetError> {
    let system = SYSTEM_READ.iter().map(PathBuf::from);
    Ruleset::default()
        .handle_access(AccessFs::from_all(FILES_ABI))?
        .handle_access(AccessNet::BindTcp)?
        .create()?
        .add_rules(path_beneath_rules(
            system.chain(paths.read.iter().cloned()),
            read_rights(),
        ))?
        .add_rules(path_beneath_rules(&paths.write, write_rights()))?
        .add_rules(path_beneath_rules(&paths.remove, AccessFs::RemoveFile))
}

/// The signal that asks a thread to confine itself: one of the real-time signals, which nothing
/// else in keyward uses.
fn signal_number() -> libc::c_int {
    libc::SIGRTMIN() + 6
}

/// The ruleset the signal handler puts on its thread (-1 when no confinement is under way).
static RULESET: AtomicI32 = AtomicI32::new(-1);
/// Threads that answered: their id, negative when the kernel refused.
const SLOTS: usize = 4096;
static ANSWERS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static ANSWERED: AtomicUsize = AtomicUsize::new(0);

/// Runs on the thread the signal was sent to: only system calls and atomics (signal-safe).
extern "C" fn confine_this_thread(_: libc::c_int) {
    let fd = RULESET.load(Ordering::Acquire);
    if fd < 0 {
        return;
    }
    // SAFETY: errno is this thread's; it is put back so the interrupted code sees its own.
    let errno = unsafe { *libc::__errno_location() };
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let confined = confine(fd);
    let slot = ANSWERED.fetch_add(1, Ordering::AcqRel);
    if slot < SLOTS {
        ANSWERS[slot].store(if confined { tid } else { -tid }, Ordering::Release);
    }
    unsafe { *libc::__errno_location() = errno };
}

/// `no_new_privs` (Landlock requires it without CAP_SYS_ADMIN) and the ruleset, on this thread.
fn confine(fd: libc::c_int) -> bool {
    // SAFETY: plain system calls on integers; `fd` stays open until every thread answered.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
            && libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) == 0
    }
}

fn answers() -> (HashSet<i32>, Vec<i32>) {
    let count = ANSWERED.load(Ordering::Acquire).min(SLOTS);
    let mut done = HashSet::new();
    let mut refused = Vec::new();
    for slot in &ANSWERS[..count] {
        match slot.load(Ordering::Acquire) {
            0 => {}
            tid if tid < 0 => {
                refused.push(-tid);
                done.insert(-tid);
            }
            tid => {
                done.insert(tid);
            }
        }
    }
    (done, refused)
}

fn threads() -> Result<Vec<i32>, SandboxError> {
    let entries = std::fs::read_dir("/proc/self/task")
        .map_err(|err| SandboxError::Files(format!("cannot list keyward's threads: {err}")))?;
    Ok(entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect())
}

fn alive(tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/self/task/{tid}")).exists()
}

/// Puts the ruleset on every thread: the others by signal, until a look at the thread list finds
/// none that has not answered, then this one.
fn every_thread(ruleset: &OwnedFd) -> Result<(), SandboxError> {
    const PATIENCE: Duration = Duration::from_secs(10);
    // SAFETY: the handler only makes system calls and touches atomics.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = confine_this_thread as *const () as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal_number(), &action, std::ptr::null_mut()) != 0 {
            return Err(SandboxError::Files(format!(
                "cannot install the signal handler: {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    RULESET.store(ruleset.as_raw_fd(), Ordering::Release);
    let result = signal_the_others();
    if result.is_ok() && !confine(ruleset.as_raw_fd()) {
        RULESET.store(-1, Ordering::Release);
        return Err(SandboxError::Files(format!(
            "the kernel refused the ruleset: {}",
            std::io::Error::last_os_error()
        )));
    }
    RULESET.store(-1, Ordering::Release);
    return result;

    fn signal_the_others() -> Result<(), SandboxError> {
        // SAFETY: getpid/gettid take nothing.
        let (pid, me) = unsafe { (libc::getpid(), libc::syscall(libc::SYS_gettid) as i32) };
        let mut asked: HashSet<i32> = HashSet::new();
        loop {
            let (done, refused) = answers();
            if let Some(tid) = refused.first() {
                return Err(SandboxError::Files(format!(
                    "the kernel refused the ruleset on thread {tid}"
                )));
            }
            let waiting: Vec<i32> = threads()?
                .into_iter()
                .filter(|tid| *tid != me && !done.contains(tid))
                .collect();
            if waiting.is_empty() {
                return Ok(());
            }
            for &tid in &waiting {
                if asked.insert(tid) {
                    // SAFETY: a signal to a thread of this process, whose handler is installed.
                    unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal_number()) };
                }
            }
            let deadline = Instant::now() + PATIENCE;
            loop {
                let (done, _) = answers();
                if waiting.iter().all(|tid| done.contains(tid) || !alive(*tid)) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(SandboxError::Files(format!(
                        "{} thread(s) did not take the ruleset within {PATIENCE:?}",
                        waiting.iter().filter(|tid| !done.contains(tid)).count()
                    )));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}
