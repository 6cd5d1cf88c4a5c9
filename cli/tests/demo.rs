//! `greenlight demo --headless` with its defaults (36 workers, the 15k-test IMVU-shaped
//! suite) runs its whole script and every build gets the verdict the script expects.

use std::process::Command;

#[test]
fn headless_demo_gets_every_expected_verdict() {
    let output = Command::new(env!("CARGO_BIN_EXE_greenlight"))
        .args(["demo", "--headless", "--port", "0"])
        .output()
        .expect("the demo starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed ({}):\n{stdout}\n{stderr}", output.status);
    assert!(stdout.contains("every build got the expected verdict"), "{stdout}");
    // The summary table: four builds, the batch covering three changes, the red one naming its test.
    let rows: Vec<&str> = stdout.lines().filter(|line| line.starts_with('#')).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    assert!(rows[1].contains("batch of three") && rows[1].split_whitespace().any(|cell| cell == "3"), "{}", rows[1]);
    assert!(rows[2].contains(" red ") && rows[2].trim_end().ends_with("red"), "{}", rows[2]);
    // The breaking change's row is its build of the chat tests, not the culprit search's
    // probe of the same revision (one change, one test).
    let cells: Vec<&str> = rows[2].split_whitespace().collect();
    let (changes, tests): (u32, u32) = (cells[4].parse().unwrap(), cells[5].parse().unwrap());
    assert!(changes == 1 && tests > 100, "the breaking change's own build: {}", rows[2]);
    assert!(stdout.contains("failed: unit/chat/"), "the red build names the broken chat test:\n{stdout}");
}
