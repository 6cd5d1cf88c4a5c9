"use strict";
// What the page draws, decided in one place: how a shard or a build the master sends is
// drawn (`shardLook`, `buildLook`), and the small formatting helpers every view uses.
// Pure functions of their arguments (and the clock, for `ago`): no DOM, no fetching, no
// page state, so the browser tests can call them directly.

// Every state the page draws, in legend order: its one-letter form for narrow columns and
// what the legend says it means. Colours live in the stylesheet, one rule per state
// (`.s-<state>` and `.box[data-state="<state>"]`).
const DRAWN = new Map([
  ["queued", {letter: "Q", meaning: "not leased yet"}],
  ["running", {letter: "R", meaning: "running"}],
  ["passed", {letter: "P", meaning: "every test passed"}],
  ["failed", {letter: "F", meaning: "a test failed"}],
  ["flaky", {letter: "~", meaning: "a test passed on a retry"}],
  ["gave-back", {letter: "G", meaning: "passed, and gave tests back to idle workers"}],
  ["lost", {letter: "L", meaning: "lease lost: expired, infrastructure error or taken back; its unreported tests ran elsewhere"}],
  ["cancelled", {letter: "C", meaning: "its build was cancelled"}],
  ["unknown", {letter: "?", meaning: "a state this page does not know"}],
]);

// The wire states of a lost lease, with why it was lost.
const LOST_BECAUSE = new Map([
  ["expired", "the lease expired"],
  ["infra_error", "an infrastructure error"],
  ["taken_back", "taken back (the worker asked for new work while holding it)"],
]);

// How a shard is drawn, from its wire `state` (`running`, `finished`, `expired`,
// `infra_error`, `taken_back`, `cancelled`; anything else is `unknown`, never passed),
// its counts, its `withdrawn` tests, the test it was `stopped` running (its other copy
// reported first) and whether it is a backup copy (`copy_of`): `{state, label, why}`.
// `state` is one of DRAWN's keys (the boxes' `data-state`), `label` is written on the
// box, `why` goes in its title.
function shardLook(shard) {
  const look = stateLook(shard);
  if (shard.copy_of == null) return look;
  return {...look, why: look.why + "; a backup copy of the test shard " + shard.copy_of + " ran late"};
}
function stateLook(shard) {
  const wire = shard.state;
  if (wire === "running") return {state: "running", label: "running", why: "running"};
  if (wire === "cancelled") return {state: "cancelled", label: "cancelled", why: "cancelled with its build"};
  if (LOST_BECAUSE.has(wire)) return {state: "lost", label: "lost", why: "lost: " + LOST_BECAUSE.get(wire)};
  if (wire !== "finished") return {state: "unknown", label: "unknown", why: "unknown state " + JSON.stringify(wire)};
  const c = shard.counts || {};
  const withdrawn = shard.withdrawn || 0;
  const gaveBack = withdrawn > 0 ? ", gave back " + withdrawn + " tests" : "";
  if ((c.failed || 0) + (c.error || 0) > 0) return {state: "failed", label: "failed", why: "failed" + gaveBack};
  if ((c.flaky || 0) > 0) return {state: "flaky", label: "flaky", why: "flaky" + gaveBack};
  if (shard.stopped) {
    const stopped = "stopped " + shard.stopped + ": its other copy reported first";
    return {state: "gave-back", label: "stopped", why: stopped + (withdrawn > 1 ? ", gave back " + (withdrawn - 1) + " more tests" : "")};
  }
  if (withdrawn > 0) return {state: "gave-back", label: "gave back " + withdrawn, why: "passed" + gaveBack};
  return {state: "passed", label: "passed", why: "passed"};
}

// How a build's box on the waterfall is drawn, from its wire state: one of DRAWN's keys.
const BUILD_DRAWN = new Map([["queued", "queued"], ["running", "running"], ["green", "passed"], ["red", "failed"], ["error", "lost"]]);
function buildLook(build) { return BUILD_DRAWN.get(build.state) || "unknown"; }

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
// `label` (what is written) defaults to the state itself.
function stateTag(state, label) { return '<span class="state s-' + esc(state) + '">' + esc(label == null ? state : label) + "</span>"; }
function testLink(id) { return '<a href="#/test/' + encodeURIComponent(id) + '" class="mono">' + esc(id) + "</a>"; }
function buildLink(id) { return id == null ? "" : '<a href="#/build/' + id + '">#' + id + "</a>"; }
// Flaky (passed on a retry) and quarantined failures are counted apart from passed and failed.
function done(c) { return c.passed + c.failed + c.skipped + c.error + (c.flaky || 0) + (c.quarantined || 0); }
