//! `greenlight config sample`: every key of the master's configuration with its default,
//! commented. The values are the code's own defaults (a [`Config`] made by [`defaults`] and
//! serialised), so the sample cannot drift from them; [`KEYS`] says what each key is for,
//! and is also the list of known keys `greenlight config check` suggests from. The tests
//! below hold [`KEYS`] to the fields of [`Config`], one for one.

use std::path::PathBuf;

use super::{Config, SuiteConfig};

/// One key as the sample shows it.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Its table: `""` for the top level, `workers.*` for a worker's own table.
    pub section: &'static str,
    /// The key.
    pub key: &'static str,
    /// What it is for, one line.
    pub help: &'static str,
    /// A value to show, commented out, when the default is unset or empty.
    pub example: &'static str,
}

const fn key(section: &'static str, key: &'static str, help: &'static str, example: &'static str) -> Key {
    Key { section, key, help, example }
}

/// Every key of the configuration, in the sample's order.
pub const KEYS: &[Key] = &[
    key("", "data_dir", "required: where the store, the git mirror and test archives live", ""),
    key("", "listen", "the address the master listens on", ""),
    key("", "worker_token", "workers send `Authorization: Bearer TOKEN`; unset: any worker may register", "\"s3cret\""),
    key("", "worker_token_env", "or the environment variable holding the worker token", "\"GREENLIGHT_WORKER_TOKEN\""),
    key("", "admin_token", "admin calls (cancel, quarantine, full run, history import); unset: off", "\"adm1n\""),
    key("", "admin_token_env", "or the environment variable holding it", "\"GREENLIGHT_ADMIN_TOKEN\""),
    key("", "hook_token", "`greenlight submit` may present it instead of the worker token", "\"h00k\""),
    key("", "hook_token_env", "or the environment variable holding it", "\"GREENLIGHT_HOOK_TOKEN\""),
    key("", "read_token", "set to close the page and the read API too (bearer or ?token=)", "\"r3ad\""),
    key("", "read_token_env", "or the environment variable holding it", "\"GREENLIGHT_READ_TOKEN\""),
    key("", "max_body_bytes", "the largest request body accepted", ""),
    key("", "max_test_duration_s", "longer reported durations are clamped and kept out of estimates", ""),
    key("", "max_output_bytes", "a result's output beyond this is cut (its end kept)", ""),
    key("", "max_archive_bytes", "the largest nextest archive a worker may upload (else 413)", ""),
    key(
        "",
        "public_url",
        "the page's address in links (forge statuses, notifications); unset: http://LISTEN",
        "\"https://greenlight.example\"",
    ),
    key(
        "workers.*",
        "token",
        "only this worker presents it; the shared worker_token is refused for it",
        "\"only-box-17-knows\"",
    ),
    key("workers.*", "token_env", "or the environment variable holding it", "\"BOX_17_TOKEN\""),
    key("repository", "url", "required: anything `git clone` accepts; workers clone it too", ""),
    key("repository", "branch", "the watched branch", ""),
    key("repository", "poll_interval_s", "seconds between fetches of the branch", ""),
    key("suite", "runner", "`command` (the templates below), `pytest` or `nextest`", ""),
    key(
        "suite",
        "file",
        "command runner, required (or list_command): a suite file in the repository; \
         with pytest or nextest remove it, and they list the tests",
        "\"greenlight-suite.json\"",
    ),
    key("suite", "list_command", "or a command (argv) printing the suite JSON in a checkout", "[\"./list-tests\"]"),
    key("suite", "setup_command", "once per revision on each worker (argv)", ""),
    key("suite", "run_command", "command runner, required: the shard's argv; {ids_file} {ids} {junit} {revision}", ""),
    key("suite", "env", "environment of the setup and shard commands", "{ LANG = \"C.UTF-8\" }"),
    key("suite", "runner_args", "pytest or nextest: arguments as for a direct run", ""),
    key("suite", "python", "pytest runner: the interpreter that has pytest", ""),
    key("suite", "cargo", "nextest runner: the cargo that has cargo-nextest", ""),
    key("suite", "warm", "pytest runner: one process per worker and revision", ""),
    key("suite", "narrow_listing", "pytest runner: a tag-selected build collects only its tags' paths", ""),
    key(
        "tags",
        "paths",
        "globs over changed paths to tags (besides a `Tags:` trailer)",
        "{ \"src/chat/**\" = [\"chat\"] }",
    ),
    key("scheduler", "lease_timeout_s", "a worker silent this long has lost its shard", ""),
    key("scheduler", "heartbeat_interval_s", "seconds between a worker's heartbeats", ""),
    key("scheduler", "min_shard_s", "the least estimated work of a shard (seconds)", ""),
    key("scheduler", "min_shard_overheads", "the least work of a shard, in shard overheads", ""),
    key("scheduler", "uncertain_shard_overheads", "how uncertain a shard's end may grow, in shard overheads", ""),
    key("scheduler", "tail_fraction", "the part of a worker's share held back for smaller shards", ""),
    key("scheduler", "max_attempts", "leases without a result before a test is given up (build: error)", ""),
    key("scheduler", "retries", "a failed test runs again on another worker before it counts", ""),
    key("scheduler", "infra_failures_to_bench", "shards lost in a row before a worker is benched ...", ""),
    key("scheduler", "bench_s", "... for this long, doubled for each further loss", ""),
    key("scheduler", "max_shard_s", "no shard holds more, however few workers are live", ""),
    key("scheduler", "split_running_leases", "a late shard gives its unstarted tests to idle workers", ""),
    key(
        "scheduler",
        "shard_sizing",
        "\"fitted\" (default): one shard a worker while estimates hold, finer otherwise; \"finer\": 2-3 a worker",
        "",
    ),
    key("scheduler", "straggler_copies", "run a backup copy of a test holding the build's end on idle workers", ""),
    key("gate", "fix_marker", "a message with it passes a closed gate (so does git's `Revert \"...\"`)", ""),
    key("gate", "find_culprit", "bisect a red build's failures to the change that broke them", ""),
    key("gate", "revert_culprit", "commit and push the revert of each proven culprit", ""),
    key("gate", "flaky_fails_build", "a test that passed only on a retry makes the build red", ""),
    key("push", "command", "run for every green revision (GREENLIGHT_REVISION, _BUILD_ID, _BRANCH)", ""),
    key(
        "push",
        "webhook",
        "or a URL that gets a JSON POST {revision, build_id, branch}",
        "\"https://deploy.example/hook\"",
    ),
    key("push", "attempts", "attempts before a push is reported failed", ""),
    key("push", "backoff_s", "seconds before the first retry, doubled for each next one", ""),
    key("full_runs", "every_builds", "ignore tags every this many builds (0: never by count)", ""),
    key("full_runs", "interval_s", "or when this many seconds passed since the last full run (0: never)", ""),
    key("quarantine", "flake_rate", "quarantine automatically at this flake rate over recent runs (0: never)", ""),
    key("quarantine", "min_runs", "... once a test has this many recent runs", ""),
    key("quarantine", "expires_in_s", "how long a quarantine lasts", ""),
    key("storage", "min_free_bytes", "below this free space no new build starts (the gate warns)", ""),
    key("storage", "reserve_bytes", "below this every write is refused (503, workers retry); <= min_free_bytes", ""),
    key("storage", "cache_bytes", "the store's page cache in memory", ""),
    key("storage", "keep_results_builds", "full results and shards of the newest N builds (0: all)", ""),
    key("storage", "keep_results_days", "and only of builds ended in the last N days (0: no limit)", ""),
    key(
        "forge",
        "kind",
        "commit statuses on the forge: github, gitlab or gitea (Forgejo too); unset: none",
        "\"github\"",
    ),
    key(
        "forge",
        "api_url",
        "the API root, version included; unset: api.github.com, gitlab.com/api/v4 (gitea: required)",
        "\"https://gitea.example/api/v1\"",
    ),
    key("forge", "repository", "owner/name on the forge (GitLab: the project's path or id)", "\"acme/product\""),
    key("forge", "token", "the token statuses are posted with", "\"ghp_...\""),
    key("forge", "token_env", "or the environment variable holding it", "\"GREENLIGHT_FORGE_TOKEN\""),
    key("forge", "context", "the statuses' name on the forge", ""),
    key("forge", "attempts", "attempts before a status is given up (logged, counted in /metrics)", ""),
    key("forge", "backoff_s", "seconds before the first retry, doubled for each next one (at most 60)", ""),
    key(
        "notify",
        "slack_webhook",
        "gate closed / culprit found / gate reopened / build error, as Slack JSON {text, blocks}",
        "\"https://hooks.slack.com/services/...\"",
    ),
    key("notify", "slack_webhook_env", "or the environment variable holding it", "\"GREENLIGHT_SLACK_WEBHOOK\""),
    key("notify", "json_webhook", "the same as plain JSON (README: the schema)", "\"https://ops.example/greenlight\""),
    key("notify", "json_webhook_env", "or the environment variable holding it", "\"GREENLIGHT_JSON_WEBHOOK\""),
    key("notify", "attempts", "attempts before a notification is given up (logged, counted in /metrics)", ""),
    key("notify", "backoff_s", "seconds before the first retry, doubled for each next one (at most 60)", ""),
];

/// The tables of the configuration, in the sample's order (`""` is the top level).
pub fn sections() -> Vec<&'static str> {
    let mut sections: Vec<&'static str> = Vec::new();
    for key in KEYS {
        if !sections.contains(&key.section) {
            sections.push(key.section);
        }
    }
    sections
}

/// The configuration the sample shows: the code's defaults, with placeholders for the
/// three things that have none (the data directory, the repository, the suite).
pub fn defaults() -> Config {
    Config::new(
        PathBuf::from("/var/lib/greenlight"),
        "/srv/git/product.git".to_owned(),
        SuiteConfig::command(
            "greenlight-suite.json",
            ["./run-tests", "--junit", "{junit}", "--ids-from", "{ids_file}"].map(str::to_owned).to_vec(),
        ),
    )
}

/// The sample configuration: every key, its default (or an example, commented out, when
/// it has none), what it is for.
pub fn sample() -> String {
    let defaults = toml::Table::try_from(defaults()).expect("the configuration serialises to TOML");
    let mut text = String::from(
        "# greenlight-master.toml: the master's configuration, every key with its default\n\
         # (`greenlight config sample`). Keys commented out are unset by default; the values\n\
         # of required keys are examples.\n\
         # Check a file with `greenlight config check greenlight-master.toml`.\n",
    );
    for section in sections() {
        let table = match section {
            "" => Some(&defaults),
            _ => defaults.get(section).and_then(toml::Value::as_table),
        };
        match section {
            "" => {}
            "workers.*" => {
                text.push_str("\n# A worker with a token of its own (revoke it alone):\n# [workers.box-17]\n")
            }
            _ => text.push_str(&format!("\n[{section}]\n")),
        }
        for key in KEYS.iter().filter(|key| key.section == section) {
            text.push_str(&format!("# {}\n", key.help));
            let value = table.and_then(|table| table.get(key.key));
            match value {
                Some(toml::Value::Table(table)) if table.is_empty() => {
                    text.push_str(&format!("# {} = {}\n", key.key, key.example));
                }
                Some(value) => text.push_str(&format!("{} = {}\n", key.key, value)),
                None => text.push_str(&format!("# {} = {}\n", key.key, key.example)),
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// `section.key` of every key in `table`, descending only into known tables.
    fn paths(table: &toml::Table, section: &str, out: &mut BTreeSet<String>) {
        let known: Vec<&str> = sections();
        for (name, value) in table {
            let inner = match (section, name.as_str()) {
                ("", "workers") => Some("workers.*".to_owned()),
                ("", name) if known.contains(&name) => Some(name.to_owned()),
                _ => None,
            };
            match (inner, value) {
                (Some(inner), toml::Value::Table(table)) if inner == "workers.*" => {
                    for worker in table.values() {
                        paths(worker.as_table().unwrap(), &inner, out);
                    }
                }
                (Some(inner), toml::Value::Table(table)) => paths(table, &inner, out),
                _ => {
                    out.insert(format!("{section}.{name}"));
                }
            }
        }
    }

    #[test]
    fn the_keys_are_the_fields_of_the_configuration() {
        // Every optional value set, so that each field shows up.
        let mut full = defaults();
        for token in [
            &mut full.worker_token,
            &mut full.worker_token_env,
            &mut full.admin_token,
            &mut full.admin_token_env,
            &mut full.hook_token,
            &mut full.hook_token_env,
            &mut full.read_token,
            &mut full.read_token_env,
            &mut full.push.webhook,
            &mut full.public_url,
            &mut full.forge.api_url,
            &mut full.forge.repository,
            &mut full.forge.token,
            &mut full.forge.token_env,
            &mut full.notify.slack_webhook,
            &mut full.notify.slack_webhook_env,
            &mut full.notify.json_webhook,
            &mut full.notify.json_webhook_env,
        ] {
            *token = Some("x".into());
        }
        full.workers.insert(
            "box".into(),
            crate::config::WorkerSection { token: Some("t".into()), token_env: Some("T".into()) },
        );
        full.forge.kind = Some(crate::config::ForgeKind::Github);
        let mut fields = BTreeSet::new();
        paths(&toml::Table::try_from(full).unwrap(), "", &mut fields);
        let listed: BTreeSet<String> = KEYS.iter().map(|key| format!("{}.{}", key.section, key.key)).collect();
        assert_eq!(listed.len(), KEYS.len(), "a key listed twice");
        assert_eq!(fields, listed, "KEYS must list every field of Config, and no other");
    }

    #[test]
    fn the_sample_parses_back_to_the_defaults() {
        let text = sample();
        let parsed: Config = toml::from_str(&text).unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert_eq!(parsed.problems(), Vec::<String>::new());
        assert_eq!(toml::Table::try_from(parsed).unwrap(), toml::Table::try_from(defaults()).unwrap());
        // Every key is in the text, set or commented out.
        for key in KEYS {
            assert!(
                text.lines().any(|line| line.trim_start_matches("# ").starts_with(&format!("{} = ", key.key))),
                "{} is missing from the sample",
                key.key
            );
        }
        // Every optional key commented out, as an example that parses too.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with("[workers.") => format!("{rest}\n"),
                _ => format!("{line}\n"),
            })
            .collect();
        let examples: Config = toml::from_str(&uncommented).unwrap_or_else(|error| panic!("{error}\n{uncommented}"));
        assert_eq!(examples.push.webhook.as_deref(), Some("https://deploy.example/hook"));
        assert_eq!(examples.own_worker_token("box-17"), Some("only-box-17-knows"));
    }
}
