//! Child processes of a worker die with it: a worker killed with SIGKILL must not leave
//! its shard's runner writing results nobody will read.

/// Asks the kernel to SIGKILL the child when the worker dies (Linux), on top of
/// `kill_on_drop` for orderly exits.
#[cfg(target_os = "linux")]
pub fn die_with_parent(command: &mut tokio::process::Command) {
    #[expect(unsafe_code, reason = "pre_exec runs between fork and exec; prctl is async-signal-safe")]
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// No-op where the kernel has no parent-death signal.
#[cfg(not(target_os = "linux"))]
pub fn die_with_parent(_command: &mut tokio::process::Command) {}
