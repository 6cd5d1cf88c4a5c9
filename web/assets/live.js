"use strict";
// The page's data and how it stays current: the lists are fetched once, then the master's
// server-sent events (coalesced batches, one per 250 ms) are applied to `S`; a `resync`
// or a reconnect refetches. Renders are coalesced into one animation frame and throttled
// per view (`dirty`, `renderFrame`): however many updates arrive, the waterfall renders at
// most every 500 ms. Nothing is fetched per box or per event.
window.greenlightPageId = Math.random().toString(36).slice(2);
const S = {
  builds: new Map(),      // build_id -> BuildSummary
  shards: new Map(),      // lease_id -> {build_id, shard}
  changes: new Map(),     // sequence -> ChangeView
  gate: null,
  workers: [],
  pushes: [],
  tests: new Map(),       // build_id -> {at, running, failures, results (pages so far), cursor, complete, …}
  showAll: new Set(),     // builds whose every result the user asked to see
  renders: 0,
};
window.greenlight = S;
const WATERFALL_BUILDS = 6;

async function getJson(path) {
  const response = await fetch(path);
  if (!response.ok) throw new Error(path + ": HTTP " + response.status);
  return response.json();
}

// ---- loading and live updates ----
async function loadAll() {
  const [builds, changes, gate, workers] = await Promise.all([
    getJson("/api/v1/builds?limit=200"), getJson("/api/v1/changes?limit=300"),
    getJson("/api/v1/gate"), getJson("/api/v1/workers"),
  ]);
  for (const b of builds) S.builds.set(b.build_id, b);
  for (const c of changes) S.changes.set(c.sequence, c);
  S.gate = gate; S.workers = workers;
  const recent = builds.slice().sort((a, b) => b.build_id - a.build_id).slice(0, WATERFALL_BUILDS);
  await Promise.all(recent.map(b => loadShards(b.build_id)));
  S.pushes = await getJson("/api/v1/pushes").catch(() => []);
  dirty("all");
}
async function loadShards(buildId) {
  const detail = await getJson("/api/v1/builds/" + buildId);
  S.builds.set(buildId, detail.build);
  for (const shard of detail.shards) S.shards.set(shard.lease_id, {build_id: buildId, shard});
}
// A build's results, in pages (`?limit=&cursor=`, by test id): never all at once unless a
// view asks. Its failures (`?status=failed,error`, few) are what the build page shows
// first, fetched once and again only when stale: a running build's at most every 10 s (at
// once when a build event announces a new failure), and only while a view shows them.
// The rest comes page by page when the user asks (`loadRest`), or whole for a shard's
// panel (`allResults`). Pages read while a build runs continue from their cursor (a result
// stored since for an earlier test id comes when the build's state changes and the
// results are read again).
const RESULTS_PAGE = 1000;
function resultsEntry(buildId) {
  let entry = S.tests.get(buildId);
  if (!entry) {
    entry = {at: 0, running: false, failures: null, results: [], cursor: null, complete: false, allAt: 0, loading: null};
    S.tests.set(buildId, entry);
  }
  return entry;
}
function isRunning(buildId) {
  const build = S.builds.get(buildId);
  return !!build && (build.state === "running" || build.state === "queued");
}
function fresh(at, running) { return at && (!running || Date.now() - at < 10000); }
async function resultsPage(buildId, query, cursor) {
  return getJson("/api/v1/builds/" + buildId + "/tests?" + query + (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
}
// Every failed or errored result of a build (a retried failure among them, `retried` set).
async function buildFailures(buildId, force) {
  const entry = resultsEntry(buildId);
  if (entry.failures && !force && fresh(entry.at, entry.running)) return entry;
  const running = isRunning(buildId);
  const failures = [];
  let cursor = null;
  do {
    const page = await resultsPage(buildId, "status=failed,error&limit=" + RESULTS_PAGE, cursor);
    failures.push(...page.results);
    cursor = page.next_cursor;
  } while (cursor);
  Object.assign(entry, {at: Date.now(), running, failures});
  return entry;
}
// The next page of a build's results after those loaded into `entry` (one fetch at a time).
async function loadMore(buildId, entry) {
  if (!entry.loading) {
    entry.loading = resultsPage(buildId, "limit=" + RESULTS_PAGE, entry.cursor).then(page => {
      if (S.tests.get(buildId) !== entry) return;
      entry.results.push(...page.results);
      entry.cursor = page.next_cursor || null;
      entry.complete = !page.next_cursor;
      if (entry.complete) entry.allAt = Date.now();
    }).finally(() => { entry.loading = null; });
  }
  await entry.loading;
}
// Every result of a build, page after page, each rendered as it comes (until the entry is
// read again from the start).
function loadRest(buildId) {
  const entry = resultsEntry(buildId);
  entry.rest = entry.rest || (async () => {
    while (!entry.complete && S.tests.get(buildId) === entry) {
      await loadMore(buildId, entry);
      dirty("tests");
    }
    return entry;
  })().finally(() => { entry.rest = null; });
  return entry.rest;
}
// Every result of a build by test id (a shard's panel): read again when stale.
async function allResults(buildId, force) {
  let entry = resultsEntry(buildId);
  if (!entry.complete || force || !fresh(entry.allAt, isRunning(buildId))) {
    S.tests.delete(buildId);
    entry = resultsEntry(buildId);
    await loadRest(buildId);
  }
  if (!entry.byId || entry.byIdOf !== entry.results.length) {
    entry.byId = new Map();
    for (const r of entry.results) {
      if (!entry.byId.has(r.test_id)) entry.byId.set(r.test_id, []);
      entry.byId.get(r.test_id).push(r);
    }
    entry.byIdOf = entry.results.length;
  }
  return entry;
}
function apply(events) {
  for (const e of events) {
    if (e.kind === "build") {
      const previous = S.builds.get(e.data.build_id);
      if (!previous) prune(e.data.build_id);
      S.builds.set(e.data.build_id, e.data);
      // A new state: every result is read again; a new failure: the failures are.
      const cached = S.tests.get(e.data.build_id);
      if (cached && previous && previous.state !== e.data.state) S.tests.delete(e.data.build_id);
      else if (cached && previous && previous.failed_tests.length !== e.data.failed_tests.length) cached.at = 0;
      dirty("builds");
    } else if (e.kind === "shard") {
      const known = S.shards.get(e.data.shard.lease_id);
      if (known && known.shard.test_ids && !e.data.shard.test_ids) e.data.shard.test_ids = known.shard.test_ids;
      S.shards.set(e.data.shard.lease_id, {build_id: e.data.build_id, shard: e.data.shard});
      dirty("shards");
    } else if (e.kind === "gate") {
      S.gate = e.data; dirty("gate");
    } else if (e.kind === "change") {
      S.changes.set(e.data.sequence, e.data); dirty("changes");
    }
  }
}
// A page open all day keeps the shards of the newest 20 builds and the results of the
// newest 3 it has fetched.
function prune(newest) {
  for (const [lease, s] of S.shards) if (s.build_id <= newest - 20) S.shards.delete(lease);
  const cached = [...S.tests.keys()].sort((a, b) => b - a);
  for (const id of cached.slice(3)) S.tests.delete(id);
}
let source = null;
function connect() {
  const live = document.getElementById("live");
  source = new EventSource("/api/v1/events");
  let wasDown = false;
  source.onopen = () => {
    live.textContent = "live"; live.className = "";
    if (wasDown) { wasDown = false; loadAll().catch(showError); }
  };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "down"; wasDown = true; };
  source.addEventListener("batch", message => { apply(JSON.parse(message.data)); S.batches = (S.batches || 0) + 1; });
  source.addEventListener("resync", () => loadAll().catch(showError));
}
// Pushes and workers have no events: poll them slowly, and only what the view shows.
setInterval(() => {
  const route = currentRoute().name;
  if (route === "workers" || route === "waterfall") getJson("/api/v1/workers").then(w => { S.workers = w; dirty("workers"); }).catch(() => {});
  if (route === "console") getJson("/api/v1/pushes").then(p => { S.pushes = p; dirty("pushes"); }).catch(() => {});
}, 3000);

// ---- rendering: coalesced into one animation frame ----
let pending = new Set();
let frameQueued = false;
let lastRender = 0;
let laterQueued = false;
const MIN_RENDER_MS = {waterfall: 500, build: 1000, console: 500, builds: 500, workers: 500};
function dirty(what) {
  pending.add(what);
  if (frameQueued) return;
  frameQueued = true;
  requestAnimationFrame(renderFrame);
}
function renderFrame() {
  frameQueued = false;
  const what = pending; pending = new Set();
  renderGate();
  const route = currentRoute();
  // The test page changes only when opened; the others re-render at most every
  // MIN_RENDER_MS (the waterfall and the build page are the heavy ones).
  if ((route.name === "test" || route.name === "flaky") && !what.has("all")) return;
  const wait = (MIN_RENDER_MS[route.name] || 0) - (performance.now() - lastRender);
  if (wait > 0 && !what.has("all")) {
    for (const w of what) pending.add(w);
    if (!laterQueued) { laterQueued = true; setTimeout(() => { laterQueued = false; dirty("later"); }, wait); }
    return;
  }
  lastRender = performance.now();
  S.renders++;
  route.render(route.arg, what);
  // When the first view with data was on screen (the page bench reads it).
  if (S.renders === 1 || (!S.firstDataRenderAt && S.builds.size)) S.firstDataRenderAt = S.builds.size ? performance.now() : null;
}
function showError(error) { document.getElementById("live").textContent = "error: " + error.message; }
