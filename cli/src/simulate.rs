//! `greenlight simulate` (DESIGN.md): the real scheduler against a virtual clock.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context;
use greenlight_scheduler::baseline::{simulate_static, split_by_count, split_by_estimate};
use greenlight_scheduler::core::SchedulerConfig;
use greenlight_scheduler::estimate::estimate;
use greenlight_scheduler::plan::BuildPlan;
use greenlight_scheduler::select::select;
use greenlight_scheduler::simulate::simulate;
use greenlight_scheduler::suite::Suite;
use greenlight_shared::suite::{HistoryFile, SuiteFile};

/// Arguments of `greenlight simulate`.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The suite file.
    #[arg(long)]
    suite: PathBuf,
    /// Number of workers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    workers: u32,
    /// Durations the scheduler sees instead of the suite's (`{"durations_s": {...}}`).
    #[arg(long)]
    history: Option<PathBuf>,
    /// Select by these tags (comma separated); every test when absent.
    #[arg(long, value_delimiter = ',')]
    tags: Vec<String>,
    /// Write the schedule here as JSON.
    #[arg(long)]
    schedule_out: Option<PathBuf>,
}

pub fn run(args: &SimulateArgs) -> anyhow::Result<()> {
    let bytes = std::fs::read(&args.suite).with_context(|| format!("cannot read {}", args.suite.display()))?;
    let file = SuiteFile::from_json(&bytes).with_context(|| format!("{}", args.suite.display()))?;
    let suite = Suite::new(file).with_context(|| format!("{} is not a valid suite", args.suite.display()))?;
    let history = match &args.history {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let history = HistoryFile::from_json(&bytes).with_context(|| path.display().to_string())?;
            Some(history)
        }
        None => None,
    };
    let tags: BTreeSet<String> =
        args.tags.iter().map(|tag| tag.trim().to_owned()).filter(|tag| !tag.is_empty()).collect();
    let selected = select(&suite, &tags);
    let estimates = match &history {
        Some(history) => estimate(&suite, |test| history.durations_s.get(&test.id).copied()),
        None => estimate(&suite, |test| test.duration_s),
    };
    let plan = BuildPlan::new(&suite, &selected, &estimates);
    // A test takes exactly its duration_s; one without takes what it was estimated at.
    let actual: Vec<f64> =
        selected.iter().map(|&index| suite.tests[index].duration_s.unwrap_or(estimates.seconds[index])).collect();
    let n_workers = args.workers as usize;
    let result = simulate(&plan, &actual, n_workers, SchedulerConfig::default());
    println!("suite:        {} ({} of {} tests selected)", suite.name, plan.len(), suite.len());
    println!("workers:      {n_workers}");
    println!("makespan:     {:.1} s", result.makespan_s);
    println!("lower bound:  {:.1} s", result.lower_bound_s);
    println!("ratio:        {:.3}", result.ratio());
    println!("shards:       {}", result.shards.len());
    // For comparison, in the same run: the static splits most CI services offer.
    let by_count = simulate_static(&plan, &actual, &split_by_count(&plan, n_workers));
    let by_estimate = simulate_static(&plan, &actual, &split_by_estimate(&plan, n_workers));
    println!("compared with one static shard per worker:");
    println!("  split by test count:          makespan {:.1} s, ratio {:.3}", by_count.makespan_s, by_count.ratio());
    println!(
        "  split by estimated durations: makespan {:.1} s, ratio {:.3}",
        by_estimate.makespan_s,
        by_estimate.ratio()
    );
    if let Some(path) = &args.schedule_out {
        let shards: Vec<serde_json::Value> = result
            .shards
            .iter()
            .map(|shard| {
                serde_json::json!({
                    "worker": shard.worker,
                    "start": shard.start,
                    "end": shard.end,
                    "tests": shard.tests.iter().map(|&index| plan.tests[index].id.as_str()).collect::<Vec<_>>(),
                })
            })
            .collect();
        let json = serde_json::to_string_pretty(&serde_json::json!({ "shards": shards }))?;
        std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}
