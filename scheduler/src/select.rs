//! Selection (DESIGN.md): no tags selects every test; tags select every test carrying one
//! of them or the tag `always`, plus everything those tests depend on, transitively.

use std::collections::BTreeSet;

use crate::suite::{Suite, TestIndex};

/// The tag that puts a test in every selection.
pub const ALWAYS: &str = "always";

/// The indices of the selected tests, in suite order.
pub fn select(suite: &Suite, tags: &BTreeSet<String>) -> Vec<TestIndex> {
    if tags.is_empty() {
        return (0..suite.len()).collect();
    }
    let mut selected = vec![false; suite.len()];
    let mut stack: Vec<TestIndex> = suite
        .tests
        .iter()
        .enumerate()
        .filter(|(_, test)| test.tags.iter().any(|tag| tag == ALWAYS || tags.contains(tag)))
        .map(|(index, _)| index)
        .collect();
    while let Some(index) = stack.pop() {
        if std::mem::replace(&mut selected[index], true) {
            continue;
        }
        stack.extend(suite.tests[index].depends_on.iter().copied().filter(|&dep| !selected[dep]));
    }
    selected.iter().enumerate().filter(|(_, chosen)| **chosen).map(|(index, _)| index).collect()
}

/// The tests named in `ids` that the suite has, plus everything they depend on,
/// transitively, in suite order (for re-running chosen tests, as culprit finding does).
pub fn select_ids<'a>(suite: &Suite, ids: impl IntoIterator<Item = &'a str>) -> Vec<TestIndex> {
    let mut selected = vec![false; suite.len()];
    let mut stack: Vec<TestIndex> = ids.into_iter().filter_map(|id| suite.index_of(id)).collect();
    while let Some(index) = stack.pop() {
        if std::mem::replace(&mut selected[index], true) {
            continue;
        }
        stack.extend(suite.tests[index].depends_on.iter().copied().filter(|&dep| !selected[dep]));
    }
    selected.iter().enumerate().filter(|(_, chosen)| **chosen).map(|(index, _)| index).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_shared::suite::{SuiteFile, SuiteTest};

    fn suite() -> Suite {
        let test = |id: &str, tags: &[&str], deps: &[&str]| SuiteTest {
            id: id.into(),
            tags: tags.iter().map(|tag| (*tag).into()).collect(),
            depends_on: deps.iter().map(|dep| (*dep).into()).collect(),
            duration_s: None,
        };
        Suite::new(SuiteFile {
            name: "s".into(),
            shard_overhead_s: 0.0,
            tests: vec![
                test("login", &["auth"], &[]),
                test("profile", &["profile"], &["login"]),
                test("chat_send", &["chat"], &["profile"]),
                test("chat_emoji", &["chat"], &[]),
                test("smoke", &["always"], &[]),
                test("shop", &["shop"], &[]),
            ],
        })
        .unwrap()
    }

    fn check(tags: &[&str], expected: &[&str]) {
        let suite = suite();
        let tags = tags.iter().map(|tag| (*tag).to_owned()).collect();
        let ids: Vec<&str> = select(&suite, &tags).into_iter().map(|i| suite.tests[i].id.as_str()).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn no_tags_selects_everything() {
        check(&[], &["login", "profile", "chat_send", "chat_emoji", "smoke", "shop"]);
    }

    #[test]
    fn a_tag_selects_its_tests_always_and_the_dependency_closure() {
        check(&["chat"], &["login", "profile", "chat_send", "chat_emoji", "smoke"]);
    }

    #[test]
    fn several_tags_union() {
        check(&["shop", "auth"], &["login", "smoke", "shop"]);
    }

    #[test]
    fn chosen_ids_come_with_their_dependencies_and_unknown_ones_are_dropped() {
        let suite = suite();
        let ids: Vec<&str> =
            select_ids(&suite, ["chat_send", "gone"]).into_iter().map(|i| suite.tests[i].id.as_str()).collect();
        assert_eq!(ids, ["login", "profile", "chat_send"]);
    }

    #[test]
    fn an_unknown_tag_still_runs_always() {
        check(&["nothing-has-this"], &["smoke"]);
    }
}
