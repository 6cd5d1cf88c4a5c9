//! Fuzzing the JUnit reader with property tests: arbitrary bytes, real reports (from
//! pytest, nextest and gotestsum, in `fixtures/junit/`) cut at every kind of place, and
//! real reports with corrupted bytes. The reader never panics, never keeps more output
//! than its limit, and reading a report while it is being written never returns a case
//! the finished report does not have: what a prefix yields is a prefix of what the whole
//! file yields. Seeds are fixed, so a failure reproduces.

use greenlight_worker::junit::{MAX_OUTPUT_BYTES, parse_cases};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, RngSeed};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        rng_seed: RngSeed::Fixed(0x5EED_0C11),
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

fn fixture(name: &str) -> Vec<u8> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/junit").join(name);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

const REAL: [&str; 4] = ["pytest-xunit1.xml", "pytest-xunit2.xml", "nextest.xml", "gotestsum.xml"];

/// The output limit plus the truncation note.
const MOST_OUTPUT: usize = MAX_OUTPUT_BYTES + 200;

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_keep_too_much(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        for case in parse_cases(&bytes) {
            prop_assert!(case.output.is_none_or(|output| output.len() <= MOST_OUTPUT));
            prop_assert!(case.time_s.is_finite() && case.time_s >= 0.0, "{}", case.time_s);
        }
    }

    #[test]
    fn xml_like_noise_never_panics(
        pieces in prop::collection::vec(prop_oneof![
            Just("<testsuites>".to_owned()), Just("<testsuite name=\"s\">".to_owned()),
            Just("<testcase name=\"a\" classname=\"c\" time=\"1.5\">".to_owned()), Just("<testcase name=\"b\"/>".to_owned()),
            Just("</testcase>".to_owned()), Just("<failure message=\"m\">".to_owned()), Just("</failure>".to_owned()),
            Just("<skipped/>".to_owned()), Just("<error>".to_owned()), Just("<flakyFailure>".to_owned()),
            Just("<system-out>".to_owned()), Just("</system-out>".to_owned()), Just("<![CDATA[x]]>".to_owned()),
            Just("&amp;&bogus;&#xD800;".to_owned()), Just("time=\"NaN\"".to_owned()), "[a-z<>/\"=& ]{0,12}",
        ], 0..30)
    ) {
        let text = pieces.concat();
        for case in parse_cases(text.as_bytes()) {
            prop_assert!(case.time_s.is_finite() && case.time_s >= 0.0, "{} in {text}", case.time_s);
        }
    }
}

proptest! {
    #![proptest_config(config(1500))]

    #[test]
    fn a_report_read_while_written_yields_a_prefix_of_the_whole(file in 0usize..REAL.len(), cut in any::<prop::sample::Index>()) {
        let bytes = fixture(REAL[file]);
        let whole = parse_cases(&bytes);
        prop_assert!(!whole.is_empty());
        let cut = cut.index(bytes.len() + 1);
        let part = parse_cases(&bytes[..cut]);
        prop_assert!(part.len() <= whole.len());
        prop_assert_eq!(&part[..], &whole[..part.len()], "{} cut at {}", REAL[file], cut);
    }

    #[test]
    fn corrupted_real_reports_never_panic(
        file in 0usize..REAL.len(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut bytes = fixture(REAL[file]);
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        for case in parse_cases(&bytes) {
            prop_assert!(case.output.is_none_or(|output| output.len() <= MOST_OUTPUT));
        }
    }
}
