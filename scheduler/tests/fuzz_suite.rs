//! Fuzzing the suite and history parsers with property tests: arbitrary bytes, truncated
//! and corrupted suite files, and structured suites with every kind of mistake (empty and
//! duplicate ids, newlines, unknown and self dependencies, cycles, bad numbers). The
//! parsers never panic; a suite is either accepted and sound, or refused with an error
//! that names a real problem of its input. Seeds are fixed, so a failure reproduces.

use std::collections::{HashMap, HashSet};

use greenlight_scheduler::suite::{Suite, SuiteError};
use greenlight_shared::suite::{HistoryFile, SuiteFile, SuiteTest};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        rng_seed: RngSeed::Fixed(0x5EED_F022),
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

/// Parses and validates; what a master does with a suite file it lists.
fn load(bytes: &[u8]) -> Result<Suite, String> {
    let file = SuiteFile::from_json(bytes).map_err(|error| error.to_string())?;
    Suite::new(file).map_err(|error| error.to_string())
}

fn valid_suite_json() -> String {
    let tests = (0..6)
        .map(|index| SuiteTest {
            id: format!("a/test_{index}.py::test[π {index} \"x\"]"),
            tags: vec!["a".into()],
            depends_on: if index > 0 {
                vec![format!("a/test_{}.py::test[π {} \"x\"]", index - 1, index - 1)]
            } else {
                vec![]
            },
            duration_s: Some(index as f64 * 0.5),
        })
        .collect();
    SuiteFile { name: "fuzz".into(), shard_overhead_s: 1.0, tests }.to_json()
}

/// Ids from a small alphabet, so duplicates and references collide often; some are empty
/// or hold a newline.
fn id_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[ab][0-3]".prop_map(String::from),
        1 => Just(String::new()),
        1 => Just("bad\nid".to_owned()),
        1 => Just("ünï::cødé[1 2]".to_owned()),
    ]
}

fn number_strategy() -> impl Strategy<Value = f64> {
    prop_oneof![
        6 => 0.0..100.0f64,
        1 => Just(f64::NAN),
        1 => Just(f64::INFINITY),
        1 => Just(-1.0),
    ]
}

fn suite_strategy() -> impl Strategy<Value = SuiteFile> {
    let test = (id_strategy(), prop::collection::vec(id_strategy(), 0..3), prop::option::of(number_strategy()))
        .prop_map(|(id, depends_on, duration_s)| SuiteTest { id, tags: vec![], depends_on, duration_s });
    (prop::collection::vec(test, 0..10), number_strategy()).prop_map(|(tests, shard_overhead_s)| SuiteFile {
        name: "s".into(),
        shard_overhead_s,
        tests,
    })
}

/// Whether `cycle` is a cycle of `file`: each id depends on the next, the last on the first.
fn is_cycle_of(file: &SuiteFile, cycle: &[String]) -> bool {
    let depends: HashMap<&str, &Vec<String>> =
        file.tests.iter().map(|test| (test.id.as_str(), &test.depends_on)).collect();
    !cycle.is_empty()
        && cycle.iter().enumerate().all(|(position, id)| {
            let next = &cycle[(position + 1) % cycle.len()];
            depends.get(id.as_str()).is_some_and(|deps| deps.contains(next))
        })
}

/// Whether the dependencies of an accepted suite admit an order (no cycle).
fn is_acyclic(suite: &Suite) -> bool {
    let mut remaining: Vec<usize> = suite.tests.iter().map(|test| test.depends_on.len()).collect();
    let mut dependants: Vec<Vec<usize>> = vec![Vec::new(); suite.tests.len()];
    for (index, test) in suite.tests.iter().enumerate() {
        for &dependency in &test.depends_on {
            dependants[dependency].push(index);
        }
    }
    let mut ready: Vec<usize> = (0..suite.tests.len()).filter(|&index| remaining[index] == 0).collect();
    let mut ordered = 0;
    while let Some(index) = ready.pop() {
        ordered += 1;
        for &dependant in &dependants[index] {
            remaining[dependant] -= 1;
            if remaining[dependant] == 0 {
                ready.push(dependant);
            }
        }
    }
    ordered == suite.tests.len()
}

proptest! {
    #![proptest_config(config(2000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        let _ = load(&bytes);
        if let Ok(history) = HistoryFile::from_json(&bytes) {
            prop_assert!(history.durations_s.values().all(|value| value.is_finite() && *value >= 0.0));
        }
    }

    #[test]
    fn truncated_or_corrupted_suite_files_are_refused_or_sound(
        cut in 0usize..2000,
        flips in prop::collection::vec((0usize..2000, any::<u8>()), 0..4),
    ) {
        let mut bytes = valid_suite_json().into_bytes();
        for (position, byte) in flips {
            let position = position % bytes.len();
            bytes[position] = byte;
        }
        bytes.truncate(cut.min(bytes.len()));
        if let Ok(suite) = load(&bytes) {
            prop_assert!(is_acyclic(&suite));
            let ids: HashSet<&str> = suite.tests.iter().map(|test| test.id.as_str()).collect();
            prop_assert_eq!(ids.len(), suite.tests.len());
        }
    }
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn a_structured_suite_is_accepted_sound_or_refused_for_a_real_reason(file in suite_strategy()) {
        match Suite::new(file.clone()) {
            Ok(suite) => {
                prop_assert_eq!(suite.tests.len(), file.tests.len());
                prop_assert!(is_acyclic(&suite));
                let ids: HashSet<&str> = file.tests.iter().map(|test| test.id.as_str()).collect();
                prop_assert_eq!(ids.len(), file.tests.len(), "duplicates accepted");
                for test in &file.tests {
                    prop_assert!(!test.id.is_empty() && !test.id.contains('\n'));
                    prop_assert!(test.depends_on.iter().all(|dependency| ids.contains(dependency.as_str())));
                    prop_assert!(test.duration_s.is_none_or(|duration| duration.is_finite() && duration >= 0.0));
                }
                prop_assert!(file.shard_overhead_s.is_finite() && file.shard_overhead_s >= 0.0);
            }
            Err(SuiteError::EmptyId { position }) => prop_assert!(file.tests[position].id.is_empty()),
            Err(SuiteError::NewlineInId { id }) => prop_assert!(id.contains('\n')),
            Err(SuiteError::DuplicateId { id }) => {
                prop_assert!(file.tests.iter().filter(|test| test.id == id).count() > 1);
            }
            Err(SuiteError::UnknownDependency { test, dependency }) => {
                prop_assert!(file.tests.iter().any(|spec| spec.id == test && spec.depends_on.contains(&dependency)));
                prop_assert!(file.tests.iter().all(|spec| spec.id != dependency));
            }
            Err(SuiteError::Cycle { cycle }) => prop_assert!(is_cycle_of(&file, &cycle), "not a cycle: {:?}", cycle),
            Err(SuiteError::BadNumber { value, .. }) => prop_assert!(!(value.is_finite() && value >= 0.0)),
        }
    }
}

/// Inputs the fuzzing above once found or that sit on its edges, kept as regressions.
#[test]
fn edge_inputs_are_refused_with_their_reason() {
    let cases: [(&str, &str); 6] = [
        (r#"{"tests":[{"id":"a","depends_on":["a"]}]}"#, "dependency cycle: \"a\" depends on \"a\""),
        (r#"{"tests":[{"id":"a","duration_s":-0.0}]}"#, ""),
        (r#"{"tests":[{"id":"a"},{"id":"a"}]}"#, "duplicate test id \"a\""),
        (r#"{"tests":[{"id":"a","duration_s":1e999}]}"#, "suite file is not valid JSON"),
        (r#"{"tests":[{"id":""}]}"#, "test #0 has an empty id"),
        ("\u{feff}{\"tests\":[]}", "suite file is not valid JSON"),
    ];
    for (input, expected) in cases {
        match load(input.as_bytes()) {
            Ok(_) => assert_eq!(expected, "", "{input} was accepted"),
            Err(message) => assert!(!expected.is_empty() && message.contains(expected), "{input}: {message}"),
        }
    }
}
