//! keyward's own sandbox, put on every thread once `serve` has read its key and bound its sockets
//! (`--no-sandbox` leaves it off): what it may open on disk ([`files`], Landlock) and which system
//! calls it may make ([`calls`], seccomp), with `no_new_privs`. For good: nothing undoes it.

pub mod calls;
pub mod files;

use std::sync::atomic::{AtomicU8, Ordering};

pub use files::{Enforced, Paths};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("this machine's architecture ({0}) has no seccomp filter in keyward")]
    Arch(&'static str),
    #[error("the seccomp filter could not be built: {0}")]
    Build(String),
    #[error("the seccomp filter could not be installed: {0}")]
    Install(String),
    #[error("the file rules (Landlock) could not be put in force: {0}")]
    Files(String),
}

/// What [`install`] put in force.
#[derive(Debug)]
pub struct Installed {
    /// The file rules: in force, not on this kernel, or refused (then keyward runs with the
    /// system call filter alone, and says so).
    pub files: Result<Enforced, SandboxError>,
}

const OFF: u8 = 0;
const CALLS: u8 = 1;
const CALLS_AND_FILES: u8 = 2;
static STATE: AtomicU8 = AtomicU8::new(OFF);

/// Confines the process: the file rules first (putting them on each thread needs system calls
/// the filter then refuses), then the system call filter. An error means the filter is not in
/// force; [`Installed::files`] says how the file rules fared.
pub fn install(paths: &Paths) -> Result<Installed, SandboxError> {
    let files = files::restrict(paths);
    calls::install()?;
    let state = match files {
        Ok(Enforced::Yes(_)) => CALLS_AND_FILES,
        _ => CALLS,
    };
    STATE.store(state, Ordering::SeqCst);
    Ok(Installed { files })
}

/// Whether [`install`] put the system call filter in force in this process.
pub fn is_on() -> bool {
    STATE.load(Ordering::SeqCst) != OFF
}

/// Whether [`install`] put the file rules in force on every thread.
pub fn files_on() -> bool {
    STATE.load(Ordering::SeqCst) == CALLS_AND_FILES
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test runs itself again as a child process, which installs the sandbox and tries what
    /// it refuses: the sandbox is for good, so the test process itself must not have it.
    #[test]
    fn a_sandboxed_process_keeps_to_its_paths_and_cannot_run_a_program() {
        const NAME: &str = "secret::sandbox::tests::a_sandboxed_process_keeps_to_its_paths_and_cannot_run_a_program";
        if let Some(dir) = std::env::var_os("KEYWARD_SANDBOX_CHILD") {
            in_the_sandbox(std::path::Path::new(&dir));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--test-threads=1", "--nocapture"])
            .env("KEYWARD_SANDBOX_CHILD", dir.path())
            .output()
            .unwrap();
        let shown = format!(
            "{}{}",
            String::from_utf8_lossy(&child.stdout),
            String::from_utf8_lossy(&child.stderr)
        );
        assert!(child.status.success(), "{shown}");
        assert!(
            shown.contains("1 passed"),
            "the child ran the test: {shown}"
        );
        assert!(!is_on(), "the test process itself is not sandboxed");
    }

    fn in_the_sandbox(dir: &std::path::Path) {
        use std::io::ErrorKind::PermissionDenied;
        let (readable, writable, elsewhere) =
            (dir.join("read"), dir.join("write"), dir.join("other"));
        for sub in [&readable, &writable, &elsewhere] {
            std::fs::create_dir(sub).unwrap();
            std::fs::write(sub.join("file"), "text").unwrap();
        }
        std::process::Command::new("/bin/true")
            .status()
            .expect("a program runs before the sandbox");
        // A thread that exists before the sandbox, as keyward's workers do, is confined too.
        let (ask, asked) = std::sync::mpsc::channel::<std::path::PathBuf>();
        let (tell, told) = std::sync::mpsc::channel();
        let worker = std::thread::spawn(move || {
            for path in asked {
                tell.send(std::fs::read(path).map(|_| ()).map_err(|e| e.kind()))
                    .unwrap();
            }
        });
        let installed = install(&Paths {
            read: vec![readable.clone()],
            write: vec![writable.clone()],
            remove: Vec::new(),
        })
        .unwrap();
        assert!(
            matches!(installed.files, Ok(Enforced::Yes(_))),
            "{installed:?}"
        );
        assert!(is_on() && files_on());

        assert_eq!(
            std::fs::read_to_string(readable.join("file")).unwrap(),
            "text"
        );
        let refused = |result: std::io::Result<()>| result.unwrap_err().kind();
        assert_eq!(
            refused(std::fs::write(readable.join("file"), "x")),
            PermissionDenied
        );
        assert_eq!(
            refused(std::fs::read(elsewhere.join("file")).map(drop)),
            PermissionDenied
        );
        assert_eq!(
            refused(std::fs::write(elsewhere.join("new"), "x")),
            PermissionDenied
        );
        std::fs::write(writable.join("new"), "x").unwrap();
        std::fs::rename(writable.join("new"), writable.join("renamed")).unwrap();
        std::fs::remove_file(writable.join("renamed")).unwrap();
        // The system's files stay readable: users and groups, DNS.
        std::fs::read("/etc/passwd").unwrap();

        ask.send(elsewhere.join("file")).unwrap();
        assert_eq!(
            told.recv().unwrap(),
            Err(PermissionDenied),
            "the older thread"
        );
        ask.send(readable.join("file")).unwrap();
        assert_eq!(told.recv().unwrap(), Ok(()));
        drop(ask);
        worker.join().unwrap();
        // A thread started later inherits it.
        let later = elsewhere.join("file");
        let kind = std::thread::spawn(move || std::fs::read(later).unwrap_err().kind())
            .join()
            .unwrap();
        assert_eq!(kind, PermissionDenied);

        let run = std::process::Command::new("/bin/true")
            .status()
            .unwrap_err();
        assert_eq!(run.raw_os_error(), Some(libc::EPERM), "{run}");
        let bind = std::net::TcpListener::bind("127.0.0.1:0").unwrap_err();
        assert_eq!(bind.kind(), PermissionDenied, "{bind}");
    }
}
