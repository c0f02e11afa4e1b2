//! keyward's own sandbox, installed on every thread once `serve` has read its key and bound its
//! sockets (`--no-sandbox` leaves it off): `no_new_privs`, and a seccomp filter that refuses, with
//! EPERM, the system calls keyward never makes and that someone who took it over would want —
//! running a program, tracing or reading another process's memory, loading kernel code, mounting,
//! entering namespaces, BPF. A first step: what keyward may open on disk (Landlock) and an
//! allow-list of exactly the calls it makes are not enforced yet.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The calls refused, by name (for the log and the README) and number.
pub const REFUSED: &[(&str, libc::c_long)] = &[
    ("execve", libc::SYS_execve),
    ("execveat", libc::SYS_execveat),
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("chroot", libc::SYS_chroot),
    ("fsopen", libc::SYS_fsopen),
    ("fsmount", libc::SYS_fsmount),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("unshare", libc::SYS_unshare),
    ("setns", libc::SYS_setns),
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("reboot", libc::SYS_reboot),
    ("acct", libc::SYS_acct),
];

static ON: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("this machine's architecture ({0}) has no seccomp filter in keyward")]
    Arch(&'static str),
    #[error("the seccomp filter could not be built: {0}")]
    Build(String),
    #[error("the seccomp filter could not be installed: {0}")]
    Install(String),
}

/// Installs the sandbox on every thread of the process, for good.
pub fn install() -> Result<(), SandboxError> {
    let arch = std::env::consts::ARCH;
    let target: TargetArch = arch.try_into().map_err(|_| SandboxError::Arch(arch))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = REFUSED
        .iter()
        .map(|&(_, number)| (number, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target,
    )
    .map_err(|err| SandboxError::Build(err.to_string()))?;
    let program: BpfProgram = filter
        .try_into()
        .map_err(|err: seccompiler::BackendError| SandboxError::Build(err.to_string()))?;
    // no_new_privs first (seccompiler sets it), then the filter on every thread at once.
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|err| SandboxError::Install(err.to_string()))?;
    ON.store(true, Ordering::SeqCst);
    Ok(())
}

/// Whether [`install`] has run in this process.
pub fn is_on() -> bool {
    ON.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test runs itself again as a child process, which installs the sandbox and tries to
    /// run a program: the sandbox is for good, so the test process itself must not have it.
    #[test]
    fn a_sandboxed_process_cannot_run_a_program() {
        const NAME: &str = "secret::sandbox::tests::a_sandboxed_process_cannot_run_a_program";
        if std::env::var_os("KEYWARD_SANDBOX_CHILD").is_some() {
            std::process::Command::new("/bin/true")
                .status()
                .expect("a program runs before the sandbox");
            install().unwrap();
            assert!(is_on());
            let refused = std::process::Command::new("/bin/true")
                .status()
                .unwrap_err();
            assert_eq!(refused.raw_os_error(), Some(libc::EPERM), "{refused}");
            return;
        }
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1"])
            .env("KEYWARD_SANDBOX_CHILD", "1")
            .output()
            .unwrap();
        assert!(
            child.status.success(),
            "{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(
            String::from_utf8_lossy(&child.stdout).contains("1 passed"),
            "the child ran the test"
        );
        assert!(!is_on(), "the test process itself is not sandboxed");
    }
}
