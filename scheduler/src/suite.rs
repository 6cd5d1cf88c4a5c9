//! A validated suite: unique ids, known dependencies, finite non-negative numbers, and an
//! acyclic dependency graph (a petgraph DAG). Errors name the offending ids; a cycle is
//! reported as the cycle itself.

use std::collections::HashMap;

use greenlight_shared::suite::SuiteFile;
use petgraph::graph::{DiGraph, NodeIndex};

/// Why a suite was rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SuiteError {
    /// A test id is empty.
    #[error("test #{position} has an empty id")]
    EmptyId {
        /// Its position in the file, from 0.
        position: usize,
    },
    /// A test id contains a newline.
    #[error("test id {id:?} contains a newline")]
    NewlineInId {
        /// The id.
        id: String,
    },
    /// Two tests share an id.
    #[error("duplicate test id {id:?}")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// A dependency names no test of the suite.
    #[error("test {test:?} depends on {dependency:?}, which is not a test of the suite")]
    UnknownDependency {
        /// The test.
        test: String,
        /// The missing dependency.
        dependency: String,
    },
    /// The dependency graph has a cycle.
    #[error("dependency cycle: {}", cycle_text(.cycle))]
    Cycle {
        /// The ids on the cycle, each depending on the next; the last depends on the first.
        cycle: Vec<String>,
    },
    /// A number is negative, infinite or not a number.
    #[error("{field} of {owner} is {value}, expected a finite number >= 0")]
    BadNumber {
        /// Which field.
        field: &'static str,
        /// The test id, or "the suite".
        owner: String,
        /// The value given.
        value: f64,
    },
}

fn cycle_text(cycle: &[String]) -> String {
    let mut text: Vec<String> = cycle.iter().map(|id| format!("{id:?}")).collect();
    if let Some(first) = cycle.first() {
        text.push(format!("{first:?}"));
    }
    text.join(" depends on ")
}

/// Position of a test in its [`Suite`].
pub type TestIndex = usize;

/// One validated test.
#[derive(Debug, Clone, PartialEq)]
pub struct TestSpec {
    /// The test id.
    pub id: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Tests it depends on.
    pub depends_on: Vec<TestIndex>,
    /// Its known duration, if the suite gives one.
    pub duration_s: Option<f64>,
}

/// A validated suite.
#[derive(Debug, Clone)]
pub struct Suite {
    /// The suite's name.
    pub name: String,
    /// Seconds every shard pays once.
    pub shard_overhead_s: f64,
    /// The tests, in file order.
    pub tests: Vec<TestSpec>,
    by_id: HashMap<String, TestIndex>,
}

fn check_number(field: &'static str, owner: &str, value: f64) -> Result<(), SuiteError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(SuiteError::BadNumber { field, owner: owner.to_owned(), value })
    }
}

impl Suite {
    /// Validates a suite file.
    pub fn new(file: SuiteFile) -> Result<Suite, SuiteError> {
        check_number("shard_overhead_s", "the suite", file.shard_overhead_s)?;
        let mut by_id = HashMap::with_capacity(file.tests.len());
        for (position, test) in file.tests.iter().enumerate() {
            if test.id.is_empty() {
                return Err(SuiteError::EmptyId { position });
            }
            if test.id.contains(['\n', '\r']) {
                return Err(SuiteError::NewlineInId { id: test.id.clone() });
            }
            if let Some(duration) = test.duration_s {
                check_number("duration_s", &test.id, duration)?;
            }
            if by_id.insert(test.id.clone(), position).is_some() {
                return Err(SuiteError::DuplicateId { id: test.id.clone() });
            }
        }
        let mut tests = Vec::with_capacity(file.tests.len());
        for test in file.tests {
            let mut depends_on = Vec::with_capacity(test.depends_on.len());
            for dependency in &test.depends_on {
                let Some(&index) = by_id.get(dependency) else {
                    return Err(SuiteError::UnknownDependency { test: test.id, dependency: dependency.clone() });
                };
                if !depends_on.contains(&index) {
                    depends_on.push(index);
                }
            }
            tests.push(TestSpec { id: test.id, tags: test.tags, depends_on, duration_s: test.duration_s });
        }
        let suite = Suite { name: file.name, shard_overhead_s: file.shard_overhead_s, tests, by_id };
        if let Some(cycle) = suite.find_cycle() {
            return Err(SuiteError::Cycle { cycle });
        }
        Ok(suite)
    }

    /// The index of a test id.
    pub fn index_of(&self, id: &str) -> Option<TestIndex> {
        self.by_id.get(id).copied()
    }

    /// Number of tests.
    pub fn len(&self) -> usize {
        self.tests.len()
    }

    /// Whether the suite has no test.
    pub fn is_empty(&self) -> bool {
        self.tests.is_empty()
    }

    /// The dependency graph: an edge from each test to every test it depends on.
    pub fn graph(&self) -> DiGraph<TestIndex, ()> {
        let mut graph = DiGraph::with_capacity(self.tests.len(), 0);
        for index in 0..self.tests.len() {
            graph.add_node(index);
        }
        for (index, test) in self.tests.iter().enumerate() {
            for &dependency in &test.depends_on {
                graph.add_edge(NodeIndex::new(index), NodeIndex::new(dependency), ());
            }
        }
        graph
    }

    /// A dependency cycle, as ids each depending on the next, if there is one.
    fn find_cycle(&self) -> Option<Vec<String>> {
        let graph = self.graph();
        if petgraph::algo::toposort(&graph, None).is_ok() {
            return None;
        }
        let components = petgraph::algo::tarjan_scc(&graph);
        let component = components
            .into_iter()
            .find(|component| component.len() > 1 || graph.contains_edge(component[0], component[0]))?;
        // Walk inside the strongly connected component until a node repeats: the walk
        // from that node's first visit is a cycle.
        let inside: std::collections::HashSet<NodeIndex> = component.iter().copied().collect();
        let mut walk = vec![component[0]];
        let mut seen_at = HashMap::from([(component[0], 0usize)]);
        loop {
            let current = *walk.last().expect("the walk starts with a node");
            let next = graph.neighbors(current).find(|node| inside.contains(node))?;
            if let Some(&start) = seen_at.get(&next) {
                // Start the cycle at the test that comes first in the file, for a stable message.
                let mut cycle = walk[start..].to_vec();
                let first = (0..cycle.len()).min_by_key(|&position| cycle[position].index()).unwrap_or(0);
                cycle.rotate_left(first);
                return Some(cycle.iter().map(|node| self.tests[node.index()].id.clone()).collect());
            }
            seen_at.insert(next, walk.len());
            walk.push(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use greenlight_shared::suite::SuiteTest;

    fn suite(tests: &[(&str, &[&str])]) -> SuiteFile {
        SuiteFile {
            name: "t".into(),
            shard_overhead_s: 0.0,
            tests: tests
                .iter()
                .map(|(id, deps)| SuiteTest {
                    id: (*id).into(),
                    tags: vec![],
                    depends_on: deps.iter().map(|dep| (*dep).into()).collect(),
                    duration_s: None,
                })
                .collect(),
        }
    }

    fn check(tests: &[(&str, &[&str])], expected: Result<(), &str>) {
        let result = Suite::new(suite(tests)).map(|_| ()).map_err(|error| error.to_string());
        assert_eq!(result, expected.map_err(str::to_owned));
    }

    #[test]
    fn accepts_a_dag() {
        check(&[("a", &[]), ("b", &["a"]), ("c", &["a", "b"])], Ok(()));
    }

    #[test]
    fn rejects_unknown_dependency() {
        check(&[("a", &[]), ("b", &["zz"])], Err(r#"test "b" depends on "zz", which is not a test of the suite"#));
    }

    #[test]
    fn rejects_duplicate_id() {
        check(&[("a", &[]), ("b", &[]), ("a", &[])], Err(r#"duplicate test id "a""#));
    }

    #[test]
    fn names_the_cycle() {
        check(
            &[("free", &[]), ("a", &["b"]), ("b", &["c"]), ("c", &["a"]), ("d", &["a"])],
            Err(r#"dependency cycle: "a" depends on "b" depends on "c" depends on "a""#),
        );
    }

    #[test]
    fn names_a_self_dependency() {
        check(&[("a", &["a"])], Err(r#"dependency cycle: "a" depends on "a""#));
    }

    #[test]
    fn rejects_empty_and_multiline_ids() {
        check(&[("ok", &[]), ("", &[])], Err("test #1 has an empty id"));
        check(&[("a\nb", &[])], Err(r#"test id "a\nb" contains a newline"#));
    }

    #[test]
    fn rejects_bad_numbers() {
        let mut file = suite(&[("a", &[])]);
        file.tests[0].duration_s = Some(-1.0);
        let error = Suite::new(file).unwrap_err().to_string();
        assert_eq!(error, "duration_s of a is -1, expected a finite number >= 0");
        let mut file = suite(&[("a", &[])]);
        file.shard_overhead_s = f64::INFINITY;
        let error = Suite::new(file).unwrap_err().to_string();
        assert_eq!(error, "shard_overhead_s of the suite is inf, expected a finite number >= 0");
    }
}
