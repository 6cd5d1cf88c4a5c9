//! The answer to a worker asking for work: which build it serves, how large its shard
//! is (the water-filled common finish time, the reserve held back, the chain cap), and
//! whether a running lease gives back the tests it has not started. The sizing maths of
//! the module documentation of [`super`] lives here.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};

use greenlight_shared::api::{LeaseDependency, TestStatus};

use super::state::{BuildRun, FittedPart, FittedSplit, LeaseState, ReadyEntry, TestState};
use super::{BuildId, Decision, LeaseGrant, LeaseId, Scheduler, ShardSizing, WorkerId};
use crate::Seconds;
use crate::plan::{PlanIndex, PlannedTest};

/// How much longer than estimated a chain of dependants may run: a shard holding a test
/// others wait on ends early enough for the chain to take this many times its estimate.
const CHAIN_SAFETY: f64 = 2.0;

/// [`ShardSizing::Fitted`] trusts a build's estimates while at most this part of its tests
/// are new (their estimates borrowed from their neighbours)...
const TRUSTED_NEW_FRACTION: f64 = 0.01;

/// ...and, once [`TRUSTED_SPREAD_AFTER`] tests with history of their own have reported,
/// while their durations are within this spread of their estimates (the root mean square
/// of `ln(real / estimated)`: 0.2 is about 20% off).
const TRUSTED_SPREAD: f64 = 0.2;

/// A lease whose tests take this many times what the build's others take runs on a slow
/// machine: what it runs is worth a copy even where estimates are not trusted.
const SLOW_PACE: f64 = 1.5;

/// How many reported tests the spread of a build's estimates is judged on.
const TRUSTED_SPREAD_AFTER: usize = 8;

/// The least uncertainty of a shard's end (seconds) that stops it
/// ([`SchedulerConfig::uncertain_shard_overheads`](super::SchedulerConfig::uncertain_shard_overheads)),
/// however cheap a shard: a worker comes back for more at most about once a second.
const UNCERTAIN_SHARD_FLOOR_S: Seconds = 1.0;

/// A shard overhead this small is a runner kept between shards (the warm pytest runner:
/// 0.0006–0.03 s learned); a runner started for each shard costs 0.5 s and more.
const CHEAP_SHARD_S: Seconds = 0.1;

/// What a shard being cut aims at.
#[derive(Debug, Clone, Copy)]
struct ShardGoal {
    /// The asking worker's share of the unleased work: the estimated seconds that bring it
    /// to the common finish time (at least `smallest`, unless `last`).
    share: Seconds,
    /// The common finish time.
    finish: Seconds,
    /// The least work worth a shard's overhead.
    smallest: Seconds,
    /// Whether this is the worker's last shard: too little would be left to hold back.
    last: bool,
}

impl Scheduler {
    /// Event: a free worker asks for work. Returns a shard to run, if any test is ready.
    /// A worker that asks while holding a lease has abandoned it: it is taken back first
    /// ([`Decision::LeaseTakenBack`]).
    pub fn request_work(&mut self, worker: WorkerId, now: Seconds) -> (Option<LeaseGrant>, Vec<Decision>) {
        self.refresh_slowness();
        let mut decisions = Vec::new();
        let held = self.workers.get(&worker).and_then(|state| state.lease);
        if let Some(lease) = held
            && let Some(build) = self.leases.get(&lease).filter(|state| state.active).map(|state| state.build)
        {
            let (requeued, consequences) = self.take_back(lease, now);
            decisions.push(Decision::LeaseTakenBack { build, lease, worker, requeued });
            decisions.extend(consequences);
        }
        let state = self.workers.entry(worker).or_default();
        state.last_seen = now;
        if state.benched_until > now {
            return (None, decisions);
        }
        let with_work = |urgent: bool| {
            self.builds.iter().find(|(_, run)| run.urgent == urgent && !run.ready.is_empty()).map(|(&build, _)| build)
        };
        let build = match with_work(true).or_else(|| with_work(false)) {
            Some(build) => {
                if let Some(copy) = self.straggler_copy(worker, Some(build), now) {
                    return (Some(copy), decisions);
                }
                if let Some(shrunk) = self.split_laggard(worker, Some(build), now) {
                    // Withdrawn tests are ready: whatever this worker leaves, others may take.
                    decisions.extend([shrunk, Decision::WorkAvailable]);
                }
                build
            }
            // Nothing is ready: the worker would idle while another runs late. It takes
            // over the end of the lease that will end last, when that ends it sooner.
            None => match self.split_laggard(worker, None, now) {
                Some(shrunk @ Decision::LeaseShrunk { build, .. }) => {
                    decisions.extend([shrunk, Decision::WorkAvailable]);
                    build
                }
                _ => return (self.straggler_copy(worker, None, now), decisions),
            },
        };
        let mut goal = self.shard_goal(build, worker, now);
        let fitted = self.fitted_part(build, worker, now);
        let holds_dependents = self.workers.get(&worker).is_some_and(|state| state.holds_dependents);
        let slowness = self.slowness(worker);
        // When the first faster worker could start a test of the build, if this one is
        // slower than another.
        let faster_ready = (slowness > 1.0)
            .then(|| {
                self.ready_times(build, worker, now)
                    .into_iter()
                    .filter(|&(id, _)| {
                        id != worker
                            && self.workers.get(&id).is_some_and(|state| state.benched_until <= now)
                            && self.slowness(id) < slowness
                    })
                    .map(|(_, ready_at)| ready_at)
                    .min_by(f64::total_cmp)
            })
            .flatten();
        let cost = self.shard_cost(&self.builds[&build], worker);
        let run = self.builds.get_mut(&build).expect("the build was just found");
        let overhead = run.costs.overhead();
        let first_of_worker = !run.started.contains(&worker);
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        let mut tests: Vec<PlanIndex> = Vec::new();
        let mut work = 0.0;
        // However few workers are live now, no shard locks up more than this: more may join.
        let max_shard = self.config.max_shard_s / run.drift.ratio();
        // A test that failed on, or was lost by, this worker runs elsewhere, unless no other
        // worker could take it.
        let others: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|&(&id, state)| id != worker && state.benched_until <= now)
            .map(|(&id, _)| id)
            .collect();
        let avoided = |run: &BuildRun, index: PlanIndex| {
            run.avoid
                .get(&index)
                .is_some_and(|avoid| avoid.contains(&worker) && others.iter().any(|other| !avoid.contains(other)))
        };
        let fitted_grant = fitted.is_some();
        if let Some(part) = fitted {
            // The worker's whole part of the split, in priority order; whatever it does not
            // take stays ready, and the split is planned again.
            let whole = part.len();
            for entry in part {
                let estimate = run.plan.tests[entry.index].estimate_s;
                if !tests.is_empty() && work + estimate > max_shard {
                    break;
                }
                if avoided(run, entry.index) || !run.ready.remove(&entry) {
                    continue;
                }
                run.lease_test(entry.index, lease);
                work += estimate;
                tests.push(entry.index);
            }
            if tests.len() != whole {
                run.ready_changed();
            }
        } else {
            if goal.last
                && let Some(head) = run.ready.last()
            {
                // A last shard holds no reserve: it is cut for the tests at the head of the
                // queue at the pace of the tests estimated alike, where those ran slower than
                // the build's drift says.
                goal.share /= alike_slowdown(run, run.plan.tests[head.index].estimate_s);
            }
            let mut variance = 0.0;
            let mut chain_cap = f64::INFINITY;
            // Past this much doubt about when the shard ends, asking again costs less than
            // committing the next test to a start nobody can tell.
            let most_doubt = (self.config.uncertain_shard_overheads * overhead).max(UNCERTAIN_SHARD_FLOOR_S);
            // The last shards of new tests, where shards are cheap, hold at most the ready new
            // tests over twice the live workers (guided self-scheduling): their estimates
            // were scaled from the first new tests to end, the quick ones, and tests alike
            // sit side by side, so one shard of neighbours could hold every slow one.
            let most_new = if goal.last && overhead <= CHEAP_SHARD_S && run.new_in_plan > 0 {
                let ready_new = run.ready.iter().filter(|entry| !run.plan.tests[entry.index].estimate_known).count();
                let live = self.workers.values().filter(|state| state.benched_until <= now).count().max(1);
                ready_new.div_ceil(2 * live).max(1)
            } else {
                usize::MAX
            };
            let mut passed_over = Vec::new();
            // A slower worker leaves to a faster one a test it would end after the common
            // finish and after a faster one would, and a new test, whose estimate is a guess
            // (it may take ten times as long). When it would leave the first in line, its
            // shard is cut from the other end of the queue, the quickest tests, for as long
            // as it ends them by then.
            let drift = run.drift.ratio();
            let leaves = |planned: &PlannedTest, work: Seconds| {
                faster_ready.is_some_and(|faster_ready| {
                    !planned.estimate_known
                        || now + cost + (work + planned.estimate_s) * drift * slowness
                            > (faster_ready + planned.estimate_s * drift).max(goal.finish)
                })
            };
            let from_quickest = run.ready.last().is_some_and(|entry| leaves(&run.plan.tests[entry.index], 0.0));
            let next = |ready: &BTreeSet<ReadyEntry>| if from_quickest { ready.first() } else { ready.last() }.copied();
            while let Some(entry) = next(&run.ready) {
                if avoided(run, entry.index) {
                    run.ready.remove(&entry);
                    passed_over.push(entry);
                    continue;
                }
                let planned = &run.plan.tests[entry.index];
                let estimate = planned.estimate_s;
                if leaves(planned, work) {
                    if from_quickest {
                        break;
                    }
                    run.ready.remove(&entry);
                    passed_over.push(entry);
                    continue;
                }
                if let Some(&first) = tests.first() {
                    // New tests and known ones are never in one shard. A shard of new tests is
                    // no larger than the reserve (their estimates are one figure for many
                    // tests, however well scaled), but worth its overhead.
                    let new_shard = !run.plan.tests[first].estimate_known;
                    let beyond_reserve =
                        work + estimate > goal.share * self.config.tail_fraction && work >= goal.smallest;
                    if new_shard && (planned.estimate_known || beyond_reserve || tests.len() >= most_new) {
                        break;
                    }
                    if !new_shard && !planned.estimate_known {
                        run.ready.remove(&entry);
                        passed_over.push(entry);
                        continue;
                    }
                }
                let relative_error = if planned.estimate_known {
                    self.config.estimate_error
                } else {
                    self.config.borrowed_estimate_error
                };
                let test_variance = (relative_error * estimate).powi(2);
                if !tests.is_empty() {
                    let doubt = self.config.reserve_sigmas * (variance + test_variance).sqrt();
                    if work >= chain_cap || work + estimate > max_shard || doubt > most_doubt {
                        break;
                    }
                    if goal.last {
                        if work >= goal.share {
                            break;
                        }
                    } else {
                        // Hold back room for the drift of what is in the shard.
                        let reserve = (goal.share * self.config.tail_fraction)
                            .max(self.config.reserve_sigmas * (variance + test_variance).sqrt());
                        if work + estimate + reserve > goal.share && work >= goal.smallest {
                            break;
                        }
                    }
                }
                if !planned.dependents.is_empty() {
                    // The chain waiting on this test must still fit before the finish: end the
                    // shard early enough for a worker to take it up (this one, at the latest).
                    let chain_behind = planned.priority_s - estimate;
                    let latest_end = goal.finish - now - 2.0 * overhead - CHAIN_SAFETY * chain_behind;
                    chain_cap = chain_cap.min(latest_end.max(work + estimate));
                }
                run.ready.remove(&entry);
                run.lease_test(entry.index, lease);
                work += estimate;
                variance += test_variance;
                tests.push(entry.index);
            }
            run.ready.extend(passed_over);
            if !tests.is_empty() {
                // Cut another way than a fitted split planned.
                run.ready_changed();
            }
        }
        if tests.is_empty() {
            // Only retries of tests this worker failed were ready: another worker takes them.
            self.next_lease -= 1;
            return (None, decisions);
        }
        // Inside the shard, retries run first (the gate waits on them), then tests that
        // others wait on, so their dependants become ready as early as possible; the rest
        // keep their priority order.
        tests.sort_by_key(|&index| (run.failures[index] == 0, run.plan.tests[index].dependents.is_empty()));
        // A fitted part's chains ride along, each test after its prerequisites, so that a
        // chain pays no shard of its own (the split counted it in this worker's part).
        let waits_on = if fitted_grant && run.plan.chains_in_lease && holds_dependents {
            let (chain_work, waits_on) = lease_chains(run, lease, &mut tests, |run, index| avoided(run, index));
            work += chain_work;
            if !waits_on.is_empty() {
                order_with_chains(run, lease, &mut tests);
            }
            waits_on
        } else {
            Vec::new()
        };
        let deadline = now + self.config.lease_timeout_s;
        let test_ids = tests.iter().map(|&index| run.plan.tests[index].id.clone()).collect();
        run.started.insert(worker);
        let state = LeaseState {
            build,
            worker,
            tests,
            deadline,
            active: true,
            progress_at: now + cost,
            remaining_estimate: work,
            running_from: now + cost,
            granted_at: now,
            first_of_worker,
            reported_s: 0.0,
            reported_estimate: 0.0,
            reported: 0,
            withdrawn: Vec::new(),
            copy_of: None,
            skipped: 0,
            measured: false,
            slowness,
        };
        self.leases.insert(lease, state);
        if let Some(state) = self.workers.get_mut(&worker) {
            state.lease = Some(lease);
        }
        (Some(LeaseGrant { lease, build, worker, tests: test_ids, waits_on, deadline, copy_of: None }), decisions)
    }

    /// Takes back the tests not yet started of the lease projected, at its own pace, to end
    /// last, when that ends its work sooner by more than twice what a new shard costs (the
    /// measured start-up of recent leases, at least the shard overhead). While `build`
    /// has other work ready, the holder keeps what it can run by the finish the other
    /// workers aim at (at least the test it is running) and the rest joins that work;
    /// when no build has work ready (`build` is `None`), it keeps what brings it level with
    /// the asking worker, which takes the rest. Only leases whose runner reports as it goes
    /// (`BuildPlan::leases_splittable`), that have reported a result (a runner that writes
    /// its report at exit never does, and could not stop after the kept tests) and that the
    /// asking worker does not hold are split.
    fn split_laggard(&mut self, worker: WorkerId, build: Option<BuildId>, now: Seconds) -> Option<Decision> {
        if !self.config.split_running_leases {
            return None;
        }
        let (id, end) = self
            .leases
            .iter()
            .filter(|(_, lease)| {
                lease.active
                    && lease.reported > 0
                    && lease.worker != worker
                    && lease.copy_of.is_none()
                    && build.is_none_or(|b| lease.build == b)
            })
            .filter_map(|(&id, lease)| {
                let run = self.builds.get(&lease.build).filter(|run| run.plan.leases_splittable)?;
                // With nothing ready, a worker idles: a test far past its estimate makes
                // its lease the one to take over.
                let end = if build.is_none() {
                    projected_end(run, id, lease, now)
                } else {
                    lease.free_at(now, run.drift.ratio())
                };
                Some((id, end))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)))?;
        let finish = build.map(|build| self.shard_goal(build, worker, now).finish);
        let withdrawn = self.laggard_cut(id, end, worker, finish, false, now)?;
        Some(self.withdraw(id, withdrawn))
    }

    /// Event: `lease` reported results. When its tests took [`SLOW_PACE`] times their
    /// estimates at the build's drift, its worker may have shown itself slower than the
    /// others since the lease was cut ([`Scheduler::slowness`], worked out again then, not
    /// at every batch): the lease is projected at that pace from now on. When it runs
    /// [`SLOW_PACE`] times the build's pace and ends after the rest of its build (the other
    /// workers' leases and the work not leased, as [`water_fill`] spreads it) by more than
    /// twice what a shard costs, it gives back what
    /// it cannot run by then, cut as [`Scheduler::split_laggard`] cuts. The tests given
    /// back would wait for the first worker free: for each, longest first, that would then
    /// end after the build's end, the lease of another worker whose running test ends
    /// first gives back what it has not started ([`Scheduler::room_for`]); its worker asks
    /// after that test, and the ready work is split again with it. So a farm's first
    /// build meets a slow machine: the part it was given had been cut for one as fast as
    /// the others, and its long tests would otherwise start there.
    pub(super) fn move_work_off_slow_machine(&mut self, lease: LeaseId, now: Seconds) -> Vec<Decision> {
        let Some(state) = self.leases.get(&lease) else { return Vec::new() };
        let (build, worker) = (state.build, state.worker);
        let Some(run) = self.builds.get(&build) else { return Vec::new() };
        let drift = run.drift.ratio();
        if !self.config.split_running_leases
            || !run.plan.leases_splittable
            || !state.active
            || state.reported == 0
            || state.copy_of.is_some()
            || state.reported_s < SLOW_PACE * drift * state.reported_estimate
        {
            return Vec::new();
        }
        self.refresh_slowness();
        let slowness = self.slowness(worker);
        let state = self.leases.get_mut(&lease).expect("just looked at");
        state.slowness = slowness;
        // A shard of unlucky tests on a machine as fast as the others is split_laggard's,
        // when a worker asks: here only a machine found slow.
        if slowness < SLOW_PACE || !runs_slow(state, drift) {
            return Vec::new();
        }
        let run = &self.builds[&build];
        let end = projected_end(run, lease, &self.leases[&lease], now);
        let others = self.ready_times(build, worker, now).into_iter().filter(|&(id, _)| id != worker).collect();
        let finish = water_fill(run.unleased_work * drift, self.capacities(others), now);
        let Some(mut withdrawn) = self.laggard_cut(lease, end, worker, Some(finish), true, now) else {
            return Vec::new();
        };
        withdrawn.sort_by(|&a, &b| run.plan.tests[b].estimate_s.total_cmp(&run.plan.tests[a].estimate_s));
        let mut rooms = Vec::new();
        let mut excluded = vec![worker];
        for &test in &withdrawn {
            let Some(room) = self.room_for(build, test, &excluded, now) else { break };
            let seconds = self.builds[&build].plan.tests[test].estimate_s * drift * self.slowness(room.worker);
            let startup = self.shard_cost(&self.builds[&build], room.worker);
            if room.soonest_free + seconds <= finish + 2.0 * startup {
                break;
            }
            excluded.push(room.worker);
            rooms.push(room);
        }
        let mut decisions = vec![self.withdraw(lease, withdrawn)];
        decisions.extend(rooms.into_iter().map(|room| self.withdraw(room.lease, room.withdrawn)));
        decisions.push(Decision::WorkAvailable);
        decisions
    }

    /// Where [`Scheduler::split_laggard`] cuts lease `id`, projected to end at `end`, for
    /// `worker` to take over the tests given back: keeping what its holder runs by `finish`
    /// (at least one test), or with no finish what brings it level with `worker`. The
    /// tests given back; `None` when the lease has fewer than two tests not started, or
    /// the cut would not end the work sooner by more than twice what a new shard costs.
    /// With `after_kept` (a machine found slow), it keeps just what it runs by `finish`,
    /// even where tests given back wait on one it keeps: they wait for that test, where
    /// the first cut that gives back none could keep a long test on that machine.
    fn laggard_cut(
        &self,
        id: LeaseId,
        end: Seconds,
        worker: WorkerId,
        finish: Option<Seconds>,
        after_kept: bool,
        now: Seconds,
    ) -> Option<Vec<PlanIndex>> {
        let lease = &self.leases[&id];
        let run = &self.builds[&lease.build];
        let drift = run.drift.ratio();
        let pace = lease.pace(drift);
        let unreported: Vec<PlanIndex> =
            lease.tests.iter().copied().filter(|&test| run.states[test] == TestState::Leased(id)).collect();
        let mut seconds: Vec<Seconds> = unreported.iter().map(|&test| run.plan.tests[test].estimate_s * pace).collect();
        if seconds.len() < 2 {
            return None;
        }
        if finish.is_none() {
            // The test it runs, past its estimate, needs as long again as it has run.
            seconds[0] =
                lease.running_test_end(run.plan.tests[unreported[0]].estimate_s, now, drift) - lease.progress_at;
        }
        // The seconds of the first `kept` tests, for every `kept`: a lease may hold thousands
        // of tests, and a slow machine's is cut at each of its results.
        let before: Vec<Seconds> = std::iter::once(0.0)
            .chain(seconds.iter().scan(0.0, |sum, &test| {
                *sum += test;
                Some(*sum)
            }))
            .collect();
        let total = before[seconds.len()];
        // Keep the first `kept` tests: the holder ends at `progress_at` plus them.
        let holder_end = |kept: usize| (lease.progress_at + before[kept]).max(now);
        // What a new shard costs the worker taking the withdrawn tests, and how much longer
        // than the holder it takes for them (the tests are alike: only the machines differ).
        let startup = self.shard_cost(run, worker);
        let relative_pace = self.slowness(worker) / self.slowness(lease.worker);
        // Where the lease may be cut: best where no test given back waits on a test it keeps
        // (a chain leased whole): given back, such a test could not run before the holder
        // passed that test, and would cost a shard of its own after it. Else where some test
        // given back can run at once; never where none can.
        let position: HashMap<PlanIndex, usize> =
            unreported.iter().enumerate().map(|(position, &test)| (test, position)).collect();
        // The earliest test of the lease each waits on, transitively (`usize::MAX`: none).
        let mut earliest = vec![usize::MAX; unreported.len()];
        for at in 0..unreported.len() {
            for dependency in &run.plan.tests[unreported[at]].depends_on {
                if let Some(&before) = position.get(dependency) {
                    earliest[at] = earliest[at].min(before).min(earliest[before]);
                }
            }
        }
        // Whether a cut before `at` gives back only tests that can run at once (`clean`),
        // or at least one (`useful`).
        let (mut clean, mut useful) = (vec![false; unreported.len()], vec![false; unreported.len()]);
        let (mut least, mut most) = (usize::MAX, 0);
        for at in (1..unreported.len()).rev() {
            (least, most) = (least.min(earliest[at]), most.max(earliest[at]));
            (clean[at], useful[at]) = (least >= at, most >= at);
        }
        let cut = |from: usize| {
            if after_kept {
                return Some(from);
            }
            let cuts = from..seconds.len();
            cuts.clone().find(|&kept| clean[kept]).or_else(|| cuts.clone().find(|&kept| useful[kept]))
        };
        let best_cut = |allowed: &[bool]| {
            (1..seconds.len())
                .filter(|&kept| allowed[kept])
                .map(|kept| {
                    let rest: Seconds = (total - before[kept]) * relative_pace;
                    (kept, holder_end(kept).max(now + startup + rest))
                })
                .min_by(|a, b| a.1.total_cmp(&b.1))
        };
        let (kept, split_end) = match finish {
            Some(finish) => {
                let fits = (1..seconds.len()).take_while(|&kept| holder_end(kept) <= finish).last().unwrap_or(1);
                let kept = cut(fits)?;
                (kept, holder_end(kept).max(finish))
            }
            None => best_cut(&clean).or_else(|| best_cut(&useful))?,
        };
        if end - split_end <= 2.0 * startup || total <= 0.0 {
            return None;
        }
        Some(unreported[kept..].to_vec())
    }

    /// Takes `withdrawn`, tests of lease `id` not started, back into the ready queue (or to
    /// waiting, for a test whose prerequisite in the lease has not passed).
    pub(super) fn withdraw(&mut self, id: LeaseId, withdrawn: Vec<PlanIndex>) -> Decision {
        let lease = self.leases.get_mut(&id).expect("a lease just looked at");
        let run = self.builds.get_mut(&lease.build).expect("its build is running");
        for &test in &withdrawn {
            // Not an attempt: it never started.
            run.attempts[test] -= 1;
            lease.remaining_estimate = (lease.remaining_estimate - run.plan.tests[test].estimate_s).max(0.0);
            // A retry keeps its place at the head of the queue.
            let priority = if run.failures[test] > 0 { f64::INFINITY } else { run.plan.dispatch_priority(test) };
            run.requeue(test, priority);
        }
        lease.withdrawn.extend_from_slice(&withdrawn);
        let withdrawn = withdrawn.iter().map(|&test| run.plan.tests[test].id.clone()).collect();
        Decision::LeaseShrunk { build: lease.build, lease: id, worker: lease.worker, withdrawn, stopped: None }
    }

    /// Makes room for the retries waiting in the ready queues (a retry heads its build's
    /// queue), after any result: [`Scheduler::make_room_for_retry`] for each build whose
    /// queue a retry heads, and [`Decision::WorkAvailable`] if a lease was shrunk.
    pub(super) fn make_room_for_retries(&mut self, now: Seconds) -> Vec<Decision> {
        let waiting: Vec<(BuildId, PlanIndex)> = self
            .builds
            .iter()
            .filter_map(|(&build, run)| {
                run.ready.last().filter(|entry| run.failures[entry.index] > 0).map(|entry| (build, entry.index))
            })
            .collect();
        let mut decisions: Vec<Decision> =
            waiting.into_iter().filter_map(|(build, test)| self.make_room_for_retry(build, test, now)).collect();
        if !decisions.is_empty() {
            // What the shrunk leases gave back is ready.
            decisions.push(Decision::WorkAvailable);
        }
        decisions
    }

    /// Makes room for the retry of a failed `test` of `build`, ready now, when every
    /// worker that may run it (not benched, and not one it failed on) holds a lease:
    /// the lease among theirs whose running test should end first gives back the tests it
    /// has not started ([`Decision::LeaseShrunk`]), so its worker asks for work after that
    /// test and takes the retry first. The retry then waits for one test, not for a whole
    /// shard: with one shard a worker ([`ShardSizing::Fitted`]), that would be the end of
    /// the build, and the gate would close only then. The tests given back are ready again
    /// for that worker, or any other. Nothing is withdrawn when such a worker is free (it is
    /// told that work is available) or will be free about as soon anyway (within what a
    /// new shard costs), or when only workers the test failed on are left (the first free
    /// takes it). Only leases [`Scheduler::split_laggard`] could split are shrunk: their
    /// runner reports as it goes and has reported a result (until then, a later result
    /// tries again).
    fn make_room_for_retry(&mut self, build: BuildId, test: PlanIndex, now: Seconds) -> Option<Decision> {
        let room = self.room_for(build, test, &[], now)?;
        Some(self.withdraw(room.lease, room.withdrawn))
    }

    /// Which lease [`Scheduler::make_room_for_retry`] would shrink for `test` of `build`
    /// (not one of a worker in `excluded`), and what it would give back; `None` when
    /// nothing should be withdrawn.
    fn room_for(&self, build: BuildId, test: PlanIndex, excluded: &[WorkerId], now: Seconds) -> Option<Room> {
        if !self.config.split_running_leases {
            return None;
        }
        let run = self.builds.get(&build)?;
        let avoid = run.avoid.get(&test).map(Vec::as_slice).unwrap_or_default();
        let mut candidates = Vec::new();
        for (&worker, state) in self
            .workers
            .iter()
            .filter(|(id, state)| state.benched_until <= now && !avoid.contains(id) && !excluded.contains(id))
        {
            let Some((id, lease)) =
                state.lease.and_then(|id| self.leases.get(&id).filter(|lease| lease.active).map(|lease| (id, lease)))
            else {
                // Free: it is told that work is available and asks.
                return None;
            };
            let Some(holder_run) = self.builds.get(&lease.build) else { continue };
            let drift = holder_run.drift.ratio();
            let free_at = lease.free_at(now, drift);
            let unreported: Vec<PlanIndex> =
                lease.tests.iter().copied().filter(|&test| holder_run.states[test] == TestState::Leased(id)).collect();
            let splittable = holder_run.plan.leases_splittable && lease.reported > 0 && lease.copy_of.is_none();
            // When it would be free keeping only the test it runs.
            let shrunk_at = match unreported.first() {
                Some(&running) if splittable && unreported.len() > 1 => {
                    (lease.progress_at + holder_run.plan.tests[running].estimate_s * lease.pace(drift)).max(now)
                }
                _ => free_at,
            };
            candidates.push((shrunk_at, free_at, id, worker, unreported));
        }
        let soonest_free = candidates.iter().map(|candidate| candidate.1).fold(f64::INFINITY, f64::min);
        let (shrunk_at, free_at, id, worker, unreported) =
            candidates.into_iter().min_by(|a, b| a.0.total_cmp(&b.0).then(a.2.cmp(&b.2)))?;
        let startup = self.shard_cost(&self.builds[&build], worker);
        if shrunk_at >= free_at || soonest_free <= shrunk_at + startup {
            return None;
        }
        Some(Room { lease: id, worker, soonest_free, withdrawn: unreported[1..].to_vec() })
    }

    /// What the next shard of `build` for `worker`, free at `now`, should aim at.
    fn shard_goal(&self, build: BuildId, worker: WorkerId, now: Seconds) -> ShardGoal {
        let run = &self.builds[&build];
        let overhead = run.costs.overhead();
        let drift = run.drift.ratio();
        // In real seconds, as far as the recent drift of estimates tells.
        let unleased = run.unleased_work * drift;
        let finish = water_fill(unleased, self.capacities(self.ready_times(build, worker, now)), now);
        // Back in estimated seconds on this worker, the unit shards are cut in.
        let slowness = self.slowness(worker);
        let share = (finish - now - self.shard_cost(run, worker)).max(0.0) / (drift * slowness);
        let smallest = self.config.min_shard_s.max(self.config.min_shard_overheads * overhead);
        let last = share * self.config.tail_fraction < smallest;
        // A last shard holds just what brings this worker to the common finish, even less
        // than `smallest`: padding it to a worthwhile size would end this worker after the
        // others, who are free by then to take the rest.
        let share = if last { share } else { share.max(smallest) };
        ShardGoal { share, finish, smallest, last }
    }

    /// Whether an idle worker asking now would be given a backup copy of the test `lease`
    /// runs ([`Scheduler::straggler_copy`], for a worker that finds nothing ready). The
    /// master then wakes its idle workers, whose long polls would otherwise end only every
    /// `wait_s` (20 s), so the copy starts at the straggler's next heartbeat.
    pub fn straggling(&self, lease: LeaseId, now: Seconds) -> bool {
        let Some(state) = self.leases.get(&lease) else { return false };
        self.config.straggler_copies
            && self.workers.iter().any(|(&worker, worker_state)| {
                self.is_idle(worker_state, now) && self.copy_candidate(lease, state, worker, None, now).is_some()
            })
    }

    /// With [`SchedulerConfig::straggler_copies`](super::SchedulerConfig::straggler_copies),
    /// a backup copy of the test a lease is running, when that lease is projected to end
    /// last, after every other lease. For a worker that finds nothing ready (`ready` is
    /// `None`) and no lease worth splitting: when a copy started now would end sooner by
    /// more than twice what a shard costs. A running test is projected to end at its
    /// start plus its estimate at its lease's pace; once past that, it is taken to need as
    /// long again as it has run (a slow or stalled machine). While the `ready` build has
    /// work: when the machine has shown itself slow (the lease's tests ran [`SLOW_PACE`]
    /// times slower than the build's, or this one has run that many times its estimate),
    /// the copy would end no later than the original, and the rest of the build still
    /// ends before it with this worker busy with the copy: as insurance, also when the
    /// machine has not shown its speed yet (it has run no test with history: a farm's
    /// first build) and the build's estimates are trusted, so that the test alone holding
    /// the build's end does not hang on one machine nobody knows. A fitted split counted
    /// this worker free: it is planned again. One copy a test; never on a worker it failed
    /// on.
    fn straggler_copy(&mut self, worker: WorkerId, ready: Option<BuildId>, now: Seconds) -> Option<LeaseGrant> {
        if !self.config.straggler_copies {
            return None;
        }
        let mut best: Option<(LeaseId, PlanIndex, Seconds)> = None;
        for (&id, lease) in &self.leases {
            let Some((test, end)) = self.copy_candidate(id, lease, worker, ready, now) else { continue };
            // The lease ending last; on a tie the first granted (the leases are a hash map:
            // its order is no order).
            if best.is_none_or(|(best_id, _, best_end)| end > best_end || (end == best_end && id < best_id)) {
                best = Some((id, test, end));
            }
        }
        let (primary, test, _) = best?;
        let build = self.leases[&primary].build;
        let slowness = self.slowness(worker);
        let cost = self.shard_cost(&self.builds[&build], worker);
        let run = self.builds.get_mut(&build).expect("a running lease's build");
        // A fitted split counted this worker free: the others' parts are cut again.
        run.ready_changed();
        let estimate = run.plan.tests[test].estimate_s;
        let lease = LeaseId(self.next_lease);
        self.next_lease += 1;
        run.copies.insert(test, lease);
        let first_of_worker = run.started.insert(worker);
        let deadline = now + self.config.lease_timeout_s;
        let state = LeaseState {
            build,
            worker,
            tests: vec![test],
            deadline,
            active: true,
            progress_at: now + cost,
            remaining_estimate: estimate,
            running_from: now + cost,
            granted_at: now,
            first_of_worker,
            reported_s: 0.0,
            reported_estimate: 0.0,
            reported: 0,
            withdrawn: Vec::new(),
            copy_of: Some(primary),
            skipped: 0,
            measured: false,
            slowness,
        };
        let test_id = run.plan.tests[test].id.clone();
        self.leases.insert(lease, state);
        self.workers.entry(worker).or_default().lease = Some(lease);
        Some(LeaseGrant {
            lease,
            build,
            worker,
            tests: vec![test_id],
            waits_on: Vec::new(),
            deadline,
            copy_of: Some(primary),
        })
    }

    /// The test lease `id` runs and when the lease is projected to end, if `worker` may run
    /// a backup copy of it now ([`Scheduler::straggler_copy`]'s rules, `ready` the build
    /// with work ready for it, if any): the lease is active, no copy, ends after every
    /// other lease of its build, and the copy pays.
    fn copy_candidate(
        &self,
        id: LeaseId,
        lease: &LeaseState,
        worker: WorkerId,
        ready: Option<BuildId>,
        now: Seconds,
    ) -> Option<(PlanIndex, Seconds)> {
        if !lease.active || lease.copy_of.is_some() || lease.worker == worker {
            return None;
        }
        let run = self.builds.get(&lease.build)?;
        let test = running_test(run, id, lease)?;
        if run.copies.contains_key(&test) || run.avoid.get(&test).is_some_and(|avoid| avoid.contains(&worker)) {
            return None;
        }
        let drift = run.drift.ratio();
        let estimate = run.plan.tests[test].estimate_s;
        let started = lease.progress_at;
        let end = lease.running_test_end(estimate, now, drift);
        let cost = self.shard_cost(run, worker);
        let copy_end = now + cost + estimate * drift * self.slowness(worker);
        match ready {
            None if end - copy_end <= 2.0 * cost => return None,
            None => {}
            Some(build) => {
                // Insurance where the test alone holds the build's end (the rest of the
                // build still ends before it, with this worker busy with the copy) and
                // its machine has shown itself slow, or, where the estimates can be
                // trusted to say which test that is, has not shown its speed at all: a
                // farm's first build cannot tell a slow machine before it has run a test.
                let unproven = trusts_estimates(run)
                    && self.workers.get(&lease.worker).is_none_or(|state| state.ratios.count == 0.0);
                if build != lease.build
                    || copy_end > end + cost
                    || !(unproven || runs_slow(lease, drift) || now - started > SLOW_PACE * estimate * drift + cost)
                {
                    return None;
                }
                let ready_at = self
                    .ready_times(build, worker, now)
                    .into_iter()
                    .map(|(id, ready_at)| (id, if id == worker { copy_end + cost } else { ready_at }))
                    .collect();
                if water_fill(run.unleased_work * drift, self.capacities(ready_at), now) + 2.0 * cost > end {
                    return None;
                }
            }
        }
        let others_end = self
            .leases
            .iter()
            .filter(|&(&other, state)| other != id && state.active && state.build == lease.build)
            .map(|(_, state)| state.free_at(now, drift))
            .fold(now, f64::max);
        (end > others_end).then_some((test, end))
    }

    /// When each live worker could start a test of `build`: when it will be free (the
    /// asking `worker` is free `now`) plus what its next shard costs it. The asking worker
    /// is among them even if it has not joined.
    fn ready_times(&self, build: BuildId, worker: WorkerId, now: Seconds) -> Vec<(WorkerId, Seconds)> {
        let run = &self.builds[&build];
        let drift = run.drift.ratio();
        let mut ready_at: Vec<(WorkerId, Seconds)> = self
            .workers
            .iter()
            .map(|(&id, state)| {
                let free_at = match state.lease.and_then(|lease| self.leases.get(&lease)) {
                    Some(lease) if id != worker && lease.active => lease.free_at(now, drift),
                    _ => now,
                };
                (id, free_at + self.shard_cost(run, id))
            })
            .collect();
        if !self.workers.contains_key(&worker) {
            ready_at.push((worker, now + self.shard_cost(run, worker)));
        }
        ready_at
    }

    /// [`Scheduler::ready_times`] as [`water_fill`] takes them: each worker's ready time
    /// and rate.
    fn capacities(&self, ready_at: Vec<(WorkerId, Seconds)>) -> Vec<(Seconds, f64)> {
        ready_at.into_iter().map(|(id, ready_at)| (ready_at, 1.0 / self.slowness(id))).collect()
    }

    /// [`ShardSizing::Fitted`]: the part of the asking worker in a split of the ready work
    /// of `build` among all live workers at once (see [`Scheduler::split_ready_work`]),
    /// highest priority first. The split is planned once and each worker's part handed out
    /// as it asks (the parts of the workers that were free when it was planned: a busy
    /// worker's start was a projection). It is planned again when the ready work changed
    /// otherwise since ([`BuildRun::ready_changed`]), when the workers it was split among
    /// are not the live ones any more, when the asking worker has no part in it (it was
    /// busy, or had its part already), or when it asks more than a shard's overhead earlier
    /// or later than the split had it start. `None` when
    /// the build is to be cut finer: the sizing says so, a lease could not give back what
    /// runs late (the runner reports only at exit, or splitting is off), the estimates are
    /// not trusted, a new test is ready (its estimate is borrowed: it goes first, in a
    /// small shard of its own), or nothing would be this worker's.
    fn fitted_part(&mut self, build: BuildId, worker: WorkerId, now: Seconds) -> Option<Vec<ReadyEntry>> {
        let run = &self.builds[&build];
        if self.config.shard_sizing != ShardSizing::Fitted
            || !self.config.split_running_leases
            || !run.plan.leases_splittable
            || !trusts_estimates(run)
        {
            return None;
        }
        // The workers the work is split among: the live ones not benched (the asking one is
        // not, or it would not be here).
        let workers: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|&(&id, state)| id == worker || state.benched_until <= now)
            .map(|(&id, _)| id)
            .collect();
        // The split holds for this worker while it starts about when the split said it
        // would: within a shard's overhead, what a split of a running lease would cost.
        let ready_at = now + self.shard_cost(run, worker);
        let planned = run.fitted_split.as_ref().is_some_and(|split| {
            split.workers == workers
                && split.parts.get(&worker).is_some_and(|part| (part.ready_at - ready_at).abs() <= run.costs.overhead())
        });
        if !planned {
            let split = self.split_ready_work(build, worker, workers, now);
            self.builds.get_mut(&build).expect("a running build").fitted_split = split;
        }
        let run = self.builds.get_mut(&build).expect("a running build");
        let part = run.fitted_split.as_mut()?.parts.remove(&worker)?.tests;
        // Nothing for this worker: the others would take it all, if they all ask (a worker
        // gone quiet is counted until it is forgotten). It is cut finer instead.
        (!part.is_empty()).then_some(part)
    }

    /// Splits the ready work of `build` among `workers` at once, longest first, each test to
    /// the worker that would be free first with what it was given so far (LPT on the
    /// estimates, the busy workers counted from when they will be free; the workers in a
    /// binary heap, so O(tests × log workers) once the tests are sorted). `worker` is the
    /// one asking: a retry goes to it (the gate waits on the result) unless the test failed
    /// there; a test goes to a worker it failed on or was lost by only when every worker
    /// did. `None` when a new test is ready.
    pub(super) fn split_ready_work(
        &self,
        build: BuildId,
        worker: WorkerId,
        workers: Vec<WorkerId>,
        now: Seconds,
    ) -> Option<FittedSplit> {
        let run = &self.builds[&build];
        if run.new_in_plan > 0 && run.ready.iter().any(|entry| !run.plan.tests[entry.index].estimate_known) {
            return None;
        }
        let drift = run.drift.ratio();
        let overhead = run.costs.overhead();
        let ready_at: HashMap<WorkerId, Seconds> = self.ready_times(build, worker, now).into_iter().collect();
        let position: HashMap<WorkerId, usize> = workers.iter().enumerate().map(|(bin, &id)| (id, bin)).collect();
        let asking = position[&worker];
        let mut levels: Vec<Seconds> = workers.iter().map(|id| ready_at[id]).collect();
        // A test others wait on counts with the tests waiting on it, transitively, and a
        // shard's overhead for each step of that chain: the worker that runs it ends its
        // shard early enough to run them after it (the test runs first in its shard). The
        // chains of one worker share their steps' shards (their first tests run first in its
        // shard, so their next steps are ready together): a worker pays the overhead of its
        // longest chain's steps, not one a chain.
        let mut chains = Chains::new(run);
        // The chains behind the tests of running leases are their workers' (they left room
        // for them when they were cut). In lease order, so that a test waiting on two of
        // them always counts with the same one.
        let mut running: Vec<(LeaseId, PlanIndex, usize)> = run
            .heads
            .iter()
            .filter_map(|&test| match run.states[test] {
                TestState::Leased(lease) => {
                    let state = self.leases.get(&lease).filter(|state| state.active && state.build == build)?;
                    Some((lease, test, *position.get(&state.worker)?))
                }
                _ => None,
            })
            .collect();
        running.sort_unstable();
        // A slower worker takes longer for its tests and its shards alike.
        let slowness: Vec<f64> = workers.iter().map(|&id| self.slowness(id)).collect();
        let mut chain_steps = vec![0; workers.len()];
        for (_, test, bin) in running {
            let (estimated, steps) = chains.behind(test);
            levels[bin] += estimated * drift * slowness[bin];
            chain_steps[bin] = chain_steps[bin].max(steps);
        }
        for ((level, &steps), &slowness) in levels.iter_mut().zip(&chain_steps).zip(&slowness) {
            *level += steps as f64 * overhead * slowness;
        }
        // Highest priority first, so that a test waiting on two ready ones counts with the
        // one dispatched first.
        // (its seconds with its chain's overheads, which orders them; its seconds; the steps
        // of its chain; the test)
        // Where shards are cheap, a ready test counts with the longest path of its chain
        // only: the other branches are work others take when it has passed, each in a
        // shard of its own (a worker whose part ends as the test does is free for one).
        let branches_apart = overhead <= CHEAP_SHARD_S;
        let mut branches = Vec::new();
        let mut items: Vec<(Seconds, Seconds, usize, Option<ReadyEntry>)> = run
            .ready
            .iter()
            .rev()
            .map(|&entry| {
                let (mut estimated, steps) = chains.behind(entry.index);
                let planned = &run.plan.tests[entry.index];
                if branches_apart {
                    let longest = (planned.priority_s - planned.estimate_s).clamp(0.0, estimated);
                    if estimated > longest {
                        branches.push((estimated - longest) * drift);
                    }
                    estimated = longest;
                }
                let seconds = (estimated + planned.estimate_s) * drift;
                (seconds + steps as f64 * overhead, seconds, steps, Some(entry))
            })
            .collect();
        items.extend(branches.into_iter().map(|seconds| (seconds, seconds, 0, None)));
        // Tests waiting on others still count, as work other workers will take when they
        // are ready (`None`): the asking worker's part is its share of everything left.
        items.extend(
            (0..run.plan.len())
                .filter(|&index| matches!(run.states[index], TestState::Waiting { .. }) && !chains.counted[index])
                .map(|index| {
                    (run.plan.tests[index].estimate_s * drift, run.plan.tests[index].estimate_s * drift, 0, None)
                }),
        );
        // Longest first; on a tie, the dispatch order (no two tests tie on both). The
        // seconds are not negative, so their bits order them as the numbers do. In dispatch
        // order already but for the tests others wait on (a test's priority is its estimate
        // and the longest chain behind it): a sort that finds the runs is all but linear.
        items.sort_by(|a, b| b.0.to_bits().cmp(&a.0.to_bits()).then_with(|| b.3.cmp(&a.3)));
        // A worker leased a chain whole pays no shard for its steps.
        let holds: Vec<bool> = workers
            .iter()
            .map(|id| run.plan.chains_in_lease && self.workers.get(id).is_some_and(|state| state.holds_dependents))
            .collect();
        let mut bins = Bins::new(&levels, chain_steps, holds, slowness, overhead, asking);
        let mut parts: Vec<Vec<ReadyEntry>> =
            vec![Vec::with_capacity(2 * run.ready.len() / workers.len() + 1); workers.len()];
        let asking_only = [worker];
        let any_retry = run.failures.iter().any(|&failures| failures > 0);
        for (_, seconds, steps, entry) in items {
            // Work others will take when it is ready goes to another worker than the one
            // asking; a test that failed on, or was lost by, some workers to another one.
            let avoid = match entry {
                Some(_) if run.avoid.is_empty() => &[],
                Some(entry) => run.avoid.get(&entry.index).map(Vec::as_slice).unwrap_or_default(),
                None => &asking_only,
            };
            let retry = any_retry && entry.is_some_and(|entry| run.failures[entry.index] > 0);
            let bin = if retry && !avoid.contains(&worker) {
                bins.add(asking, seconds, steps);
                asking
            } else {
                bins.add_to_least(|bin| !avoid.contains(&workers[bin]), seconds, steps)
            };
            if let Some(entry) = entry {
                parts[bin].push(entry);
            }
        }
        for part in &mut parts {
            // Nearly in order already (see above).
            part.sort_by(|a, b| b.cmp(a));
        }
        // The parts of the workers free now are kept for when they ask. A busy worker's
        // start is a projection from its lease's pace, which the results still to come
        // revise: it plans again when it asks.
        let free = |id: &WorkerId| {
            *id == worker
                || self.workers[id].lease.and_then(|lease| self.leases.get(&lease)).is_none_or(|lease| !lease.active)
        };
        let parts = workers
            .iter()
            .zip(parts)
            .filter(|(id, _)| free(id))
            .map(|(&id, tests)| (id, FittedPart { ready_at: ready_at[&id], tests }))
            .collect();
        Some(FittedSplit { workers, parts })
    }
}

/// A lease to shrink so that its worker asks for work after the test it runs
/// ([`Scheduler::room_for`]).
struct Room {
    lease: LeaseId,
    worker: WorkerId,
    /// When the first worker that may take the test is free, nothing withdrawn.
    soonest_free: Seconds,
    /// The tests it gives back.
    withdrawn: Vec<PlanIndex>,
}

/// The workers' loads in a split ([`Scheduler::split_ready_work`]): each test goes to the
/// worker that would end it first. The workers as fast as the others are in a binary heap
/// of (load, not the asking worker, position), least first; an entry made stale by a later
/// change of its worker's load is skipped when it surfaces. The few slower or faster ones
/// ([`Scheduler::slowness`]) are looked at one by one.
struct Bins {
    levels: Vec<Seconds>,
    /// The most steps of the chains each worker runs: it pays an overhead for each.
    steps: Vec<usize>,
    /// Whether each worker is leased the chains of its tests with them
    /// ([`BuildPlan::chains_in_lease`](crate::plan::BuildPlan::chains_in_lease)): their steps
    /// cost it no shard.
    holds: Vec<bool>,
    /// How many times as long as the others each worker takes.
    slowness: Vec<f64>,
    /// The workers whose slowness is not 1, outside the heap.
    odd: Vec<usize>,
    overhead: Seconds,
    versions: Vec<u32>,
    asking: usize,
    heap: BinaryHeap<Reverse<Bin>>,
    /// Workers [`Bins::add_to_least`] passed over, to go back in the heap.
    passed: Vec<Bin>,
}

/// One worker's load in [`Bins`], as it was when pushed.
#[derive(Debug, Clone, Copy)]
struct Bin {
    level: Seconds,
    not_asking: bool,
    position: usize,
    version: u32,
}

impl PartialEq for Bin {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Bin {}
impl PartialOrd for Bin {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bin {
    /// Least load first; on a tie the asking worker, then the first in order.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.level
            .total_cmp(&other.level)
            .then(self.not_asking.cmp(&other.not_asking))
            .then(self.position.cmp(&other.position))
    }
}

impl Bins {
    fn new(
        levels: &[Seconds],
        steps: Vec<usize>,
        holds: Vec<bool>,
        slowness: Vec<f64>,
        overhead: Seconds,
        asking: usize,
    ) -> Bins {
        let odd: Vec<usize> = (0..levels.len()).filter(|&position| slowness[position] != 1.0).collect();
        let heap = levels
            .iter()
            .enumerate()
            .filter(|&(position, _)| slowness[position] == 1.0)
            .map(|(position, &level)| Reverse(Bin { level, not_asking: position != asking, position, version: 0 }))
            .collect();
        Bins {
            levels: levels.to_vec(),
            steps,
            holds,
            slowness,
            odd,
            overhead,
            versions: vec![0; levels.len()],
            asking,
            heap,
            passed: Vec::new(),
        }
    }

    /// Adds `seconds` of tests whose chain has `steps` steps to the worker that `allowed`
    /// allows and would end them first, or to the least loaded of all when it allows none;
    /// returns which.
    fn add_to_least(&mut self, allowed: impl Fn(usize) -> bool, seconds: Seconds, steps: usize) -> usize {
        if self.odd.is_empty() {
            while let Some(Reverse(bin)) = self.heap.peek().copied() {
                if bin.version != self.versions[bin.position] {
                    self.heap.pop();
                    continue;
                }
                if !allowed(bin.position) {
                    break;
                }
                // The usual case: the least loaded takes it, and sinks in place.
                let seconds = self.cost(bin.position, seconds, steps);
                self.steps[bin.position] = self.steps[bin.position].max(steps);
                let mut least = self.heap.peek_mut().expect("just looked at");
                least.0.level += seconds;
                self.levels[bin.position] = least.0.level;
                return bin.position;
            }
        }
        let mut chosen = None;
        while let Some(Reverse(bin)) = self.heap.pop() {
            if bin.version != self.versions[bin.position] {
                continue;
            }
            if allowed(bin.position) {
                chosen = Some(bin.position);
                self.passed.push(bin);
                break;
            }
            self.passed.push(bin);
        }
        // The slower or faster workers, where one would end it sooner.
        let end = |bins: &Bins, position: usize| bins.levels[position] + bins.cost(position, seconds, steps);
        for &position in &self.odd {
            if allowed(position) && chosen.is_none_or(|chosen| end(self, position) < end(self, chosen)) {
                chosen = Some(position);
            }
        }
        // Every worker is to be avoided: the least loaded of all.
        let chosen = chosen.unwrap_or_else(|| {
            let least_odd = self.odd.iter().copied().min_by(|&a, &b| self.levels[a].total_cmp(&self.levels[b]));
            match (self.passed.first(), least_odd) {
                (Some(bin), Some(odd)) if self.levels[odd] < bin.level => odd,
                (Some(bin), _) => bin.position,
                (None, odd) => odd.expect("a split has a worker"),
            }
        });
        self.heap.extend(self.passed.drain(..).map(Reverse));
        self.add(chosen, seconds, steps);
        chosen
    }

    /// What `seconds` of tests whose chain has `steps` steps add to worker `position`'s load:
    /// the overheads of the steps beyond those of its longest chain so far, all at its
    /// slowness.
    fn cost(&self, position: usize, seconds: Seconds, steps: usize) -> Seconds {
        let beyond = if self.holds[position] { 0 } else { steps.saturating_sub(self.steps[position]) };
        (seconds + beyond as f64 * self.overhead) * self.slowness[position]
    }

    /// Adds `seconds` of tests whose chain has `steps` steps to the load of worker
    /// `position` ([`Bins::cost`]), which now has that chain: its entry in the heap, if
    /// any, goes stale and a new one is pushed.
    fn add(&mut self, position: usize, seconds: Seconds, steps: usize) {
        self.levels[position] += self.cost(position, seconds, steps);
        self.steps[position] = self.steps[position].max(steps);
        self.versions[position] += 1;
        if self.slowness[position] != 1.0 {
            return;
        }
        let bin = Bin {
            level: self.levels[position],
            not_asking: position != self.asking,
            position,
            version: self.versions[position],
        };
        self.heap.push(Reverse(bin));
    }
}

/// The chains behind tests ([`Scheduler::split_ready_work`]): a test waiting on others
/// counts in one chain only, the first asked for that reaches it.
struct Chains<'a> {
    run: &'a BuildRun,
    counted: Vec<bool>,
    stack: Vec<(PlanIndex, usize)>,
}

impl<'a> Chains<'a> {
    fn new(run: &'a BuildRun) -> Chains<'a> {
        Chains { run, counted: vec![false; run.plan.len()], stack: Vec::new() }
    }

    /// The tests waiting on `test`, transitively, not counted yet (they are now): their
    /// estimated seconds and the longest chain of them (in steps, each a shard of its own).
    fn behind(&mut self, test: PlanIndex) -> (Seconds, usize) {
        let run = self.run;
        let (mut estimated, mut steps) = (0.0, 0);
        if run.plan.tests[test].dependents.is_empty() {
            return (estimated, steps);
        }
        self.stack.push((test, 0));
        while let Some((test, step)) = self.stack.pop() {
            for &dependent in &run.plan.tests[test].dependents {
                if matches!(run.states[dependent], TestState::Waiting { .. }) && !self.counted[dependent] {
                    self.counted[dependent] = true;
                    estimated += run.plan.tests[dependent].estimate_s;
                    steps = steps.max(step + 1);
                    self.stack.push((dependent, step + 1));
                }
            }
        }
        (estimated, steps)
    }
}

/// Leases to `lease` the tests waiting on its `tests` whose dependencies all passed or are
/// in the lease, transitively (a dependency chain whole, each after its prerequisites),
/// appending them to `tests`; not those `avoided` (this worker failed or lost them).
/// Returns their estimated seconds, and each with its prerequisites in the lease.
fn lease_chains(
    run: &mut BuildRun,
    lease: LeaseId,
    tests: &mut Vec<PlanIndex>,
    avoided: impl Fn(&BuildRun, PlanIndex) -> bool,
) -> (Seconds, Vec<LeaseDependency>) {
    let mut work = 0.0;
    let mut waits_on = Vec::new();
    let mut position = 0;
    while position < tests.len() {
        let test = tests[position];
        position += 1;
        for at in 0..run.plan.tests[test].dependents.len() {
            let dependent = run.plan.tests[test].dependents[at];
            if !matches!(run.states[dependent], TestState::Waiting { .. }) || avoided(run, dependent) {
                continue;
            }
            let depends_on = &run.plan.tests[dependent].depends_on;
            let ready_here = depends_on.iter().all(|&dependency| match run.states[dependency] {
                TestState::Done(TestStatus::Passed) => true,
                TestState::Leased(holder) => holder == lease,
                _ => false,
            });
            if !ready_here {
                continue;
            }
            let prerequisites = depends_on
                .iter()
                .filter(|&&dependency| run.states[dependency] == TestState::Leased(lease))
                .map(|&dependency| run.plan.tests[dependency].id.clone())
                .collect();
            run.lease_test(dependent, lease);
            work += run.plan.tests[dependent].estimate_s;
            tests.push(dependent);
            waits_on.push(LeaseDependency { test_id: run.plan.tests[dependent].id.clone(), depends_on: prerequisites });
        }
    }
    (work, waits_on)
}

/// Orders a lease holding chains ([`lease_chains`]) as a shard without them is ordered
/// (retries first, then tests others wait on, then the rest, each by dispatch priority:
/// the longest chain first), but never a test before its prerequisites in the lease: a
/// chain runs as early as its steps allow, so its end, which may be the build's, is not
/// left to the end of the shard.
fn order_with_chains(run: &BuildRun, lease: LeaseId, tests: &mut Vec<PlanIndex>) {
    let key = |index: PlanIndex| {
        (
            run.failures[index] == 0,
            run.plan.tests[index].dependents.is_empty(),
            Reverse(run.plan.dispatch_priority(index).to_bits()),
            index,
        )
    };
    tests.sort_by_key(|&index| key(index));
    let rank: HashMap<PlanIndex, usize> = tests.iter().enumerate().map(|(rank, &index)| (index, rank)).collect();
    let in_lease = |index: PlanIndex| run.states[index] == TestState::Leased(lease) && rank.contains_key(&index);
    let mut waiting_on: Vec<usize> = tests
        .iter()
        .map(|&index| run.plan.tests[index].depends_on.iter().filter(|&&dependency| in_lease(dependency)).count())
        .collect();
    let mut free: BinaryHeap<Reverse<usize>> =
        (0..tests.len()).filter(|&rank| waiting_on[rank] == 0).map(Reverse).collect();
    let mut ordered = Vec::with_capacity(tests.len());
    while let Some(Reverse(next)) = free.pop() {
        let index = tests[next];
        ordered.push(index);
        for dependent in &run.plan.tests[index].dependents {
            if let Some(&dependent_rank) = rank.get(dependent) {
                waiting_on[dependent_rank] -= 1;
                if waiting_on[dependent_rank] == 0 {
                    free.push(Reverse(dependent_rank));
                }
            }
        }
    }
    debug_assert_eq!(ordered.len(), tests.len(), "a lease's chains are acyclic");
    *tests = ordered;
}

/// How many times slower than the build's drift the reported tests estimated alike to
/// `estimate` ran (with history of their own, estimated within a factor of [`ALIKE`] of it):
/// at least 1, and 1 until they add up to [`ALIKE_EVIDENCE`] estimates of `estimate` (and
/// [`ALIKE_EVIDENCE_S`]).
///
/// The drift is what recent tests took, and tests run longest first: by the build's end it
/// was learnt on tests estimated longer than those left. With a noisy history those are not
/// alike: sorted by estimate, the longest look longer than they are (their history erred
/// high) and the short ones shorter, so the end of a build, cut at the drift of its longest
/// tests, runs late.
fn alike_slowdown(run: &BuildRun, estimate: Seconds) -> f64 {
    let (low, high) = (estimate / ALIKE, estimate * ALIKE);
    let (mut real, mut estimated) = (0.0, 0.0);
    for (test, duration) in run.plan.tests.iter().zip(&run.durations) {
        if let Some(duration) = duration
            && test.estimate_known
            && (low..=high).contains(&test.estimate_s)
        {
            real += duration;
            estimated += test.estimate_s;
        }
    }
    if estimated < ALIKE_EVIDENCE_S.max(ALIKE_EVIDENCE * estimate) {
        return 1.0;
    }
    ((real / estimated).clamp(0.5, 2.0) / run.drift.ratio()).max(1.0)
}

/// Tests are estimated alike ([`alike_slowdown`]) within this factor of each other.
const ALIKE: f64 = 2.0;

/// [`alike_slowdown`] needs reported tests alike adding up to this many estimates of the
/// tests it is asked about...
const ALIKE_EVIDENCE: f64 = 4.0;

/// ...and to this many estimated seconds.
const ALIKE_EVIDENCE_S: Seconds = 5.0;

/// Whether a build's estimates can be trusted ([`ShardSizing::Fitted`]): at most
/// [`TRUSTED_NEW_FRACTION`] of its tests are new, and the tests reported so far took about
/// their estimates ([`TRUSTED_SPREAD`]).
fn trusts_estimates(run: &BuildRun) -> bool {
    run.new_in_plan as f64 <= TRUSTED_NEW_FRACTION * run.plan.len() as f64
        && run.spread.after(TRUSTED_SPREAD_AFTER).is_none_or(|spread| spread <= TRUSTED_SPREAD)
}

/// The level F at which the free capacity of the workers below it holds `work` seconds:
/// when they would all end if the work were fluid. Each worker is free from its ready time
/// and runs at its rate (1 for a worker as fast as the others, 1/3 for one three times
/// slower: [`Scheduler::slowness`]).
pub(super) fn water_fill(work: Seconds, mut workers: Vec<(Seconds, f64)>, now: Seconds) -> Seconds {
    workers.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (mut rate, mut weighted) = (0.0, 0.0);
    let mut finish = now + work;
    for (count, &(available, speed)) in workers.iter().enumerate() {
        rate += speed;
        weighted += speed * available;
        finish = (work + weighted) / rate;
        if workers.get(count + 1).is_none_or(|next| finish <= next.0) {
            break;
        }
    }
    finish
}

/// Whether `lease`'s tests have run [`SLOW_PACE`] times the build's pace (`drift`): a
/// slow machine, for a backup copy and for moving its work away.
fn runs_slow(lease: &LeaseState, drift: f64) -> bool {
    lease.pace(drift) >= SLOW_PACE * drift
}

/// When `lease` (`id`) should end: [`LeaseState::free_at`], but with the test it runs
/// taken to need as long again as it has run once past its estimate
/// ([`LeaseState::running_test_end`]).
fn projected_end(run: &BuildRun, id: LeaseId, lease: &LeaseState, now: Seconds) -> Seconds {
    let drift = run.drift.ratio();
    let free = lease.free_at(now, drift);
    let Some(test) = running_test(run, id, lease) else { return free };
    let estimate = run.plan.tests[test].estimate_s;
    let rest = (lease.remaining_estimate - estimate).max(0.0) * lease.pace(drift);
    free.max(lease.running_test_end(estimate, now, drift) + rest)
}

/// The test `lease` runs: its first without a result.
fn running_test(run: &BuildRun, id: LeaseId, lease: &LeaseState) -> Option<PlanIndex> {
    lease.tests.iter().copied().find(|&test| run.states[test] == TestState::Leased(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds `(seconds, steps)` in turn to the least loaded of two workers (worker 0 asking,
    /// shard overhead 1 s): which worker took each, and their loads after.
    fn check(items: &[(Seconds, usize)], expected: (&[usize], [Seconds; 2])) {
        let mut bins = Bins::new(&[0.0, 0.0], vec![0, 0], vec![false, false], vec![1.0, 1.0], 1.0, 0);
        let taken: Vec<usize> =
            items.iter().map(|&(seconds, steps)| bins.add_to_least(|_| true, seconds, steps)).collect();
        assert_eq!((taken.as_slice(), [bins.levels[0], bins.levels[1]]), expected);
    }

    #[test]
    fn a_worker_pays_the_overheads_of_its_longest_chains_steps_once() {
        // Plain tests: least loaded first, the asking worker on a tie.
        check(&[(3.0, 0), (2.0, 0), (2.0, 0)], (&[0, 1, 1], [3.0, 4.0]));
        // Three chains of one step: the second worker's second chain costs no overhead more.
        check(&[(2.0, 1), (2.0, 1), (2.0, 1)], (&[0, 1, 0], [5.0, 3.0]));
        // A chain of two steps where one of one runs: one overhead more; where none runs,
        // two.
        check(&[(2.0, 1), (3.0, 0), (2.0, 2)], (&[0, 1, 0], [6.0, 3.0]));
        check(&[(2.0, 1), (1.0, 0), (2.0, 2)], (&[0, 1, 1], [3.0, 5.0]));
    }
}
