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

/// SIGKILLs the process group `child` leads (started with `process_group(0)`): a runner
/// behind a wrapper (`sh -c`, `npx`, `mvn`) dies with everything it started, so nothing
/// goes on writing into the next shard's files. Then reaps the child.
pub async fn kill_group(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id().and_then(|pid| i32::try_from(pid).ok()) {
        #[expect(unsafe_code, reason = "kill(2) on a process group this worker started; no memory is touched")]
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    /// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
    fn ended(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // `pid (comm) S ...`: the state follows the closing parenthesis.
            Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    #[tokio::test]
    async fn stopping_a_runner_stops_what_its_wrapper_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let mut command = tokio::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("sleep 60 & echo $! > {}; wait", pid_file.display()))
            .kill_on_drop(true)
            .process_group(0);
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild: u32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file).ok().and_then(|text| text.trim().parse().ok()) {
                break pid;
            }
            assert!(Instant::now() < deadline, "the wrapper never started its child");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(!ended(grandchild));
        super::kill_group(&mut child).await;
        assert!(child.try_wait().unwrap().is_some(), "the runner is reaped");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ended(grandchild) {
            assert!(Instant::now() < deadline, "the wrapper's child {grandchild} outlived the stop");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
