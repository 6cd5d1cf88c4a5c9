//! Benchmark helpers: the seed list a bench runs, the summaries of its ratios, and the
//! shard costs of warm runners.

use greenlight_scheduler::plan::BuildPlan;

/// A shard's overhead on warm runners: the most the master learned in real warm builds
/// (`greenlight_shard_overhead_seconds`, 0.0006–0.03 s; BENCHMARKS.md).
pub const WARM_SHARD_S: f64 = 0.03;

/// `plan` on warm runners (pytest's `[suite] warm`): the suite's shard overhead becomes a
/// worker's start-up (the collection of its runner, once a build), and every shard costs
/// [`WARM_SHARD_S`]; a worker's first shard costs what it did.
pub fn on_warm_runners(plan: &mut BuildPlan) {
    plan.worker_startup_s = plan.shard_overhead_s - WARM_SHARD_S;
    plan.shard_overhead_s = WARM_SHARD_S;
}

/// `1-10` or `1,4,7`: the seeds a bench runs.
pub fn parse_seeds(text: &str) -> Option<Vec<u64>> {
    if let Some((first, last)) = text.split_once('-') {
        let (first, last) = (first.trim().parse::<u64>().ok()?, last.trim().parse::<u64>().ok()?);
        return (first <= last).then(|| (first..=last).collect());
    }
    text.split(',').map(|seed| seed.trim().parse().ok()).collect()
}

/// A series of figures, one a seed.
#[derive(Debug, Clone, Default)]
pub struct Series(Vec<f64>);

impl Series {
    /// Adds one seed's figure.
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// How many figures.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The mean (NaN when empty).
    pub fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// The largest figure (0 when empty).
    pub fn worst(&self) -> f64 {
        self.0.iter().copied().fold(0.0, f64::max)
    }

    /// How many figures exceed `target`.
    pub fn above(&self, target: f64) -> usize {
        self.0.iter().filter(|&&value| value > target).count()
    }

    /// The figures, in seed order.
    pub fn values(&self) -> &[f64] {
        &self.0
    }
}

/// One row of the makespan bench: a scheduler's ratios beside the static splits', seed by
/// seed.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Greenlight's ratio to the lower bound.
    pub greenlight: Series,
    /// Greenlight's shards per worker.
    pub shards_per_worker: Series,
    /// A static split by test count.
    pub by_count: Series,
    /// A static LPT split by estimate.
    pub by_estimate: Series,
    /// Greenlight with the shard sizing before issue #17 (`ShardSizing::Finer`).
    pub finer: Series,
    /// Greenlight with straggler copies (`SchedulerConfig::straggler_copies`).
    pub copies: Series,
    /// The idealised online scheduler: one test a lease at no cost
    /// (`greenlight_scheduler::baseline::simulate_free_dispatch`).
    pub free_dispatch: Series,
}

impl Summary {
    /// Adds one seed.
    pub fn add(&mut self, greenlight: f64, shards_per_worker: f64, by_count: f64, by_estimate: f64, finer: f64) {
        self.greenlight.push(greenlight);
        self.finer.push(finer);
        self.shards_per_worker.push(shards_per_worker);
        self.by_count.push(by_count);
        self.by_estimate.push(by_estimate);
    }

    /// Seeds on which Greenlight's ratio exceeds the static split by estimate's by more
    /// than `margin`.
    pub fn worse_than_static(&self, margin: f64) -> usize {
        Summary::worse(&self.greenlight, &self.by_estimate, margin)
    }

    /// Seeds on which `series` exceeds `baseline` by more than `margin`.
    pub fn worse(series: &Series, baseline: &Series, margin: f64) -> usize {
        let pairs = series.values().iter().zip(baseline.values());
        pairs.filter(|&(greenlight, by_estimate)| greenlight - by_estimate > margin).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_a_range_or_a_list() {
        assert_eq!(parse_seeds("3-5"), Some(vec![3, 4, 5]));
        assert_eq!(parse_seeds("7, 2"), Some(vec![7, 2]));
        assert_eq!(parse_seeds("5-3"), None);
        assert_eq!(parse_seeds("x"), None);
    }

    #[test]
    fn a_summary_counts_the_seeds_above_a_target_and_worse_than_static() {
        let mut summary = Summary::default();
        summary.add(1.05, 1.0, 1.3, 1.03, 1.05);
        summary.add(1.01, 1.0, 1.3, 1.00, 1.05);
        summary.add(1.02, 1.0, 1.3, 1.015, 1.05);
        assert_eq!(summary.greenlight.above(1.015), 2);
        assert_eq!(summary.worse_than_static(0.01), 2);
        assert_eq!(summary.greenlight.worst(), 1.05);
    }
}
