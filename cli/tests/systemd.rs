//! The systemd units in `deploy/systemd/` pass `systemd-analyze verify` without a single
//! warning, with their `ExecStart` pointed at the binary under test (verify checks that
//! the command exists). A unit with a misspelt key is the control: verify reports it.

mod common;

use std::path::Path;
use std::process::Command;

use common::greenlight;

/// `systemd-analyze verify` of `unit` installed as `name`: (success, what it printed).
fn verify(unit: &str, name: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, unit.replace("/usr/local/bin/greenlight", greenlight())).unwrap();
    let output = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap_or_else(|error| {
        panic!("systemd-analyze cannot run ({error}): install Debian's systemd (apt-get install systemd)")
    });
    let printed = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), printed)
}

#[test]
fn the_master_and_worker_units_verify_without_a_warning() {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    for (file, installed_as) in [
        ("greenlight-master.service", "greenlight-master.service"),
        ("greenlight-worker@.service", "greenlight-worker@1.service"),
    ] {
        let unit = std::fs::read_to_string(units.join(file)).unwrap();
        assert!(unit.contains("ExecStart=/usr/local/bin/greenlight "), "{file} runs the installed binary");
        let (ok, printed) = verify(&unit, installed_as);
        assert!(ok && printed.trim().is_empty(), "{file}:\n{printed}");

        let misspelt = unit.replace("Restart=", "Restrat=");
        let (_, printed) = verify(&misspelt, installed_as);
        assert!(printed.contains("Unknown key 'Restrat'"), "the control is caught: {printed}");
    }
}
