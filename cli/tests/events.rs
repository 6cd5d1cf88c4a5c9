//! The page's live updates: `GET /api/v1/events` streams server-sent events while a build
//! runs, batched and throttled (at most four messages a second however many results
//! arrive): build progress, shards, the gate closing, the red verdict.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Farm, FarmOptions, test};
use greenlight_shared::api::{BuildKind, BuildState, FarmEvent, GateState};
use greenlight_shared::suite::{SuiteFile, SuiteTest};

#[test]
fn a_build_streams_its_progress_the_gate_and_its_verdict() {
    let mut tests: Vec<SuiteTest> = vec![test("core::breaks", &["core"], &[], 20.0)];
    tests.extend((0..60).map(|index| test(&format!("core::test_{index}"), &["core"], &[], 2.0)));
    let suite = SuiteFile { name: "events".into(), shard_overhead_s: 0.0, tests };
    let farm = Farm::start(&suite, 2, FarmOptions::default());
    assert_eq!(farm.finished_build_of(&farm.repo.head().unwrap()).state, BuildState::Green);

    let (sender, received) = mpsc::channel::<Vec<FarmEvent>>();
    let url = format!("{}/api/v1/events", farm.url);
    let reader = std::thread::spawn(move || {
        let client = reqwest::blocking::Client::builder().timeout(None::<Duration>).build().unwrap();
        let response = client.get(url).send().expect("the stream opens");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut event = String::new();
        for line in BufReader::new(response).lines() {
            let Ok(line) = line else { return };
            if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_owned();
            } else if let Some(data) = line.strip_prefix("data: ")
                && event == "batch"
            {
                let batch: Vec<FarmEvent> = serde_json::from_str(data).expect("a batch is a JSON array of events");
                if sender.send(batch).is_err() {
                    return;
                }
            }
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let broken = farm.repo.set_failing("core", &["core::breaks"], "Core: break").unwrap();

    let (mut messages, mut progress, mut shards, mut gate_closed, mut red) = (0, Vec::new(), 0, false, None);
    while red.is_none() || !gate_closed {
        let batch = received.recv_timeout(Duration::from_secs(60)).expect("updates keep coming until the verdict");
        messages += 1;
        for event in batch {
            match event {
                FarmEvent::Build(build) if build.revision == broken && build.kind == BuildKind::Regular => {
                    if build.state == BuildState::Running {
                        progress.push(build.counts.done());
                    }
                    if build.state == BuildState::Red {
                        red = Some(build);
                    }
                }
                FarmEvent::Shard(_) if red.is_none() => shards += 1,
                FarmEvent::Gate(gate) => gate_closed |= gate.state == GateState::Closed,
                _ => {}
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let red = red.unwrap();
    assert_eq!(red.failed_tests, vec!["core::breaks".to_owned()]);
    assert!(shards > 0, "shards are streamed");
    assert!(progress.len() >= 2, "progress arrives while the build runs: {progress:?}");
    assert!(progress.windows(2).all(|pair| pair[0] <= pair[1]), "counts only grow: {progress:?}");
    assert!(progress.iter().any(|&done| done > 0 && done < red.counts.total), "partial progress seen: {progress:?}");
    assert!(
        f64::from(messages) <= elapsed * 4.0 + 2.0,
        "{messages} messages in {elapsed:.1} s for {} results: updates are throttled",
        red.counts.total
    );
    drop(received);
    drop(farm);
    reader.join().unwrap();
}
