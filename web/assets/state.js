"use strict";
// How the page draws what the master sends, and the small formatting helpers every view
// uses: pure functions of their arguments (and the clock, for `ago`), no DOM, no fetching.
function esc(text) {
  return String(text == null ? "" : text).replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
}
function short(revision) { return revision ? revision.slice(0, 10) : ""; }
function firstLine(message) { return (message || "").split("\n")[0]; }
function when(unix) { return unix == null ? "" : new Date(unix * 1000).toLocaleTimeString(); }
function ago(unix) {
  if (unix == null) return "";
  const s = Math.max(0, Date.now() / 1000 - unix);
  return s < 90 ? s.toFixed(0) + " s ago" : s < 5400 ? (s / 60).toFixed(0) + " min ago" : (s / 3600).toFixed(1) + " h ago";
}
function secs(s) { return s == null ? "" : s < 100 ? s.toFixed(1) + " s" : (s / 60).toFixed(1) + " min"; }
function stateTag(state) { return '<span class="state s-' + esc(state) + '">' + esc(state) + "</span>"; }
function testLink(id) { return '<a href="#/test/' + encodeURIComponent(id) + '" class="mono">' + esc(id) + "</a>"; }
function buildLink(id) { return id == null ? "" : '<a href="#/build/' + id + '">#' + id + "</a>"; }
// Flaky (passed on a retry) and quarantined failures are counted apart from passed and failed.
function done(c) { return c.passed + c.failed + c.skipped + c.error + (c.flaky || 0) + (c.quarantined || 0); }

// A shard's state on the page: queued, running, passed, failed, flaky or lost.
function shardState(shard) {
  if (shard.state === "running") return "running";
  if (shard.state === "expired" || shard.state === "infra_error") return "lost";
  const c = shard.counts || {};
  if ((c.failed || 0) + (c.error || 0) > 0) return "failed";
  if ((c.flaky || 0) > 0) return "flaky";
  return "passed";
}
