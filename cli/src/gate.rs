//! `greenlight gate` (DESIGN.md): asks the master whether the branch's gate lets a commit
//! through. Exit 0: open, or closed but the message marks a fix or a revert. Exit 1:
//! closed; prints the build, the failing tests, every culprit named (with the tests it
//! broke) and a link.
//! Exit 2: the master could not be asked. Meant for git hooks (see `hooks/`). A gate's
//! warning (a later build ended in error, a failure that did not reproduce) and what
//! keeps the farm from testing (a full disk, a repository it cannot fetch) are printed
//! whatever the gate's state, and change no exit code: an open gate vouches for nothing
//! the farm could not test.

use std::time::Duration;

use greenlight_shared::api::{GateState, GateView};
use greenlight_worker::client::check_master_url;

/// Arguments of `greenlight gate`.
#[derive(Debug, clap::Args)]
pub struct GateArgs {
    /// The master's URL.
    #[arg(long, env = "GREENLIGHT_MASTER", default_value = "http://127.0.0.1:8080")]
    master: String,
    /// The branch (the master's watched branch when absent).
    #[arg(long)]
    branch: Option<String>,
    /// The commit message: a fix or a revert is let through a closed gate.
    #[arg(long)]
    message: Option<String>,
    /// Wait until the gate opens instead of failing.
    #[arg(long)]
    wait: bool,
    /// Seconds between looks while waiting.
    #[arg(long, default_value_t = 5.0)]
    poll_interval: f64,
    /// The master's `read_token`, when it sets one.
    #[arg(long, env = "GREENLIGHT_READ_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

async fn ask(http: &reqwest::Client, master: &str, url: &str, token: Option<&str>) -> Result<GateView, String> {
    crate::client::get_json(http, master, url, token).await.map_err(|error| error.to_string())
}

fn describe(gate: &GateView, master: &str) -> String {
    let mut text = format!("gate closed on {}", gate.branch);
    if let Some(since) = gate.since {
        let minutes = ((greenlight_shared::unix_now_s() - since) / 60.0).max(0.0);
        text.push_str(&format!(" for {minutes:.0} min"));
    }
    text.push('\n');
    if let Some(build_id) = gate.build_id {
        let revision = gate.revision.as_deref().unwrap_or("?");
        text.push_str(&format!("build {build_id} (revision {}) ", &revision[..revision.len().min(12)]));
        if gate.failing_tests.is_empty() {
            text.push_str("is red\n");
        } else {
            text.push_str("failed:\n");
            for test in &gate.failing_tests {
                text.push_str(&format!("  {test}\n"));
            }
        }
    }
    if let Some(reason) = &gate.reason {
        text.push_str(&format!("{reason}\n"));
    }
    text.push_str(&warning(gate));
    let short = |revision: &str| revision[..revision.len().min(12)].to_owned();
    if !gate.culprits.is_empty() {
        for culprit in &gate.culprits {
            text.push_str(&format!(
                "culprit: {} {:?} by {}\n  broke: {}\n",
                short(&culprit.revision),
                culprit.subject,
                culprit.author,
                culprit.tests.join(", ")
            ));
        }
    } else if let Some(change) = &gate.culprit {
        // A master from before culprits were listed.
        text.push_str(&format!(
            "culprit: {} {:?} by {}\n",
            short(&change.revision),
            change.message.lines().next().unwrap_or(""),
            change.author
        ));
    } else {
        text.push_str("culprit: not known yet\n");
    }
    if let Some(build_id) = gate.build_id {
        let page = greenlight_shared::api::build_page_url(master, build_id);
        text.push_str(&format!("see {page} (JSON: {master}/api/v1/builds/{build_id})\n"));
    }
    text.push_str(&format!(
        "only a fix (a message containing {:?}) or a revert (git revert's \"Revert ...\" subject) goes through\n",
        gate.fix_marker
    ));
    text
}

/// The gate's warning as a line, or nothing.
fn warning(gate: &GateView) -> String {
    gate.warning.as_ref().map(|warning| format!("warning: {warning}\n")).unwrap_or_default()
}

/// Runs the command; returns the exit code.
pub async fn run(args: &GateArgs) -> i32 {
    let master = args.master.trim_end_matches('/');
    if let Err(error) = check_master_url(master) {
        eprintln!("greenlight gate: cannot ask the master: {error}");
        return 2;
    }
    let branch: Vec<(&str, &str)> = args.branch.iter().map(|branch| ("branch", branch.as_str())).collect();
    let url = crate::client::url(master, "/api/v1/gate", &branch);
    let http = reqwest::Client::new();
    let mut said_waiting = false;
    loop {
        let gate = match ask(&http, master, &url, args.token.as_deref()).await {
            Ok(gate) => gate,
            Err(error) => {
                eprintln!("greenlight gate: cannot ask the master: {error}");
                return 2;
            }
        };
        if !said_waiting {
            for problem in &gate.health {
                eprintln!("greenlight gate: warning: {} (see {master}/api/v1/health)", problem.message);
            }
        }
        if gate.state == GateState::Open {
            print!("gate open on {}\n{}", gate.branch, warning(&gate));
            return 0;
        }
        if let Some(message) = &args.message
            && greenlight_master::gate::lets_through(message, &gate.fix_marker)
        {
            println!("gate closed on {}, but this commit is a fix or a revert: let through", gate.branch);
            return 0;
        }
        if !args.wait {
            print!("{}", describe(&gate, master));
            return 1;
        }
        if !said_waiting {
            print!("{}", describe(&gate, master));
            println!("waiting for the gate to open...");
            said_waiting = true;
        }
        tokio::time::sleep(Duration::from_secs_f64(args.poll_interval.clamp(0.1, 600.0))).await;
    }
}
