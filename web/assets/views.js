"use strict";
// The views, one render function each, called by `renderFrame` with the route's
// argument: the gate banner (on every view), the waterfall and its shard panel, the
// console, the builds list, a build, a test, the workers and the flaky tests. They read
// `S` and draw shards and builds through `shardLook` and `buildLook` (state.js).

function renderGate() {
  const gate = S.gate;
  const banner = document.getElementById("gate");
  if (!gate) return;
  banner.dataset.state = gate.state;
  let html = "Gate " + (gate.state === "open" ? "OPEN" : "CLOSED") + " on " + esc(gate.branch);
  if (gate.state === "closed") {
    if (gate.build_id != null) html += " by build " + buildLink(gate.build_id) + " at " + esc(short(gate.revision));
    if (gate.since != null) html += " since " + when(gate.since) + " (" + ago(gate.since) + ")";
    if (gate.failing_tests.length) html += "\nfailing: " + gate.failing_tests.slice(0, 8).map(testLink).join(", ") + (gate.failing_tests.length > 8 ? " and " + (gate.failing_tests.length - 8) + " more" : "");
    if (gate.reason) html += "\n" + esc(gate.reason);
    const culprits = gate.culprits || [];
    if (culprits.length) html += culprits.map(cu => '\nculprit: <span class="mono">' + esc(short(cu.revision)) + "</span> " + esc(cu.subject) + " (" + esc(cu.author) + ") broke " + cu.tests.map(testLink).join(", ")).join("");
    else html += "\nculprit: " + (gate.culprit ? '<span class="mono">' + esc(short(gate.culprit.revision)) + "</span> " + esc(firstLine(gate.culprit.message)) + " (" + esc(gate.culprit.author) + ")" : "not known yet");
    html += " · only fixes (" + esc(gate.fix_marker) + ") and reverts may land";
  } else if (gate.since != null) {
    html += " since " + when(gate.since) + (gate.build_id != null ? " (build " + buildLink(gate.build_id) + ")" : "");
  }
  if (gate.warning) html += '\n<span class="warning">warning: ' + esc(gate.warning) + "</span>";
  // The farm's health: what keeps it from testing (a full disk, a repository it cannot
  // fetch), whatever the gate says.
  const health = gate.health || [];
  banner.dataset.health = health.length ? "problem" : "ok";
  for (const problem of health) {
    html += '\n<span class="health" data-kind="' + esc(problem.kind) + '">farm: ' + esc(problem.message) + " (since " + when(problem.since) + ")</span>";
  }
  if (banner.dataset.html !== html) { banner.innerHTML = html; banner.dataset.html = html; }
}

// ---- waterfall ----
function renderWaterfall(arg, what) {
  const view = document.getElementById("view");
  if (!document.getElementById("wf")) {
    view.innerHTML = '<div class="legend">' + [...DRAWN].map(([state, {meaning}]) => '<span data-state="' + state + '" title="' + esc(meaning) + '"><i class="s-' + state + '"></i>' + state.replace("-", " ") + "</span>").join("") +
      '<span class="muted">(narrow columns: ' + [...DRAWN.values()].map(d => d.letter).join(" ") + ') · newest at top · idle gaps collapsed · click a box for its tests</span></div><div id="wf"><div id="wf-head"></div><div id="wf-body"></div></div>';
    document.getElementById("wf-body").addEventListener("click", event => {
      const box = event.target.closest(".box");
      if (box && box.dataset.lease) openShard(Number(box.dataset.build), Number(box.dataset.lease));
      else if (box && box.dataset.build) location.hash = "#/build/" + box.dataset.build;
    });
  }
  const now = Date.now() / 1000;
  const recent = [...S.builds.values()].sort((a, b) => b.build_id - a.build_id).slice(0, WATERFALL_BUILDS);
  const shown = new Set(recent.map(b => b.build_id));
  const shards = [...S.shards.values()].filter(s => shown.has(s.build_id));
  // Columns: every worker that ran a shown shard or is known now, by name.
  const names = new Set(S.workers.map(w => w.name));
  for (const s of shards) names.add(s.shard.worker);
  const columns = [...names].sort((a, b) => a.localeCompare(b, undefined, {numeric: true}));
  const wf = document.getElementById("wf");
  // 50 workers fit a laptop screen: narrow columns write the state as one letter.
  const axis = columns.length > 12 ? 92 : 130;
  const width = Math.max(24, Math.floor((wf.clientWidth - axis - 18) / Math.max(1, columns.length + 1)));
  const narrow = width < 80;
  const colX = new Map(columns.map((name, i) => [name, axis + (i + 1) * width]));
  // Busy time: shard intervals and queued builds, merged; gaps longer than 20 s collapse.
  const spans = shards.map(s => [s.shard.started_at, s.shard.finished_at == null ? now : s.shard.finished_at]);
  for (const b of recent) spans.push([b.created_at, b.finished_at == null ? (b.state === "error" ? b.created_at + 1 : now) : b.finished_at]);
  spans.sort((a, b) => b[1] - a[1]);
  const segments = [];
  for (const [start, end] of spans) {
    const last = segments[segments.length - 1];
    if (last && end >= last.start - 20) last.start = Math.min(last.start, start);
    else segments.push({start, end});
  }
  const longest = Math.max(1, ...segments.map(s => s.end - s.start));
  const scale = Math.min(40, Math.max(0.3, (wf.clientHeight - 60) / Math.min(longest, 900)));
  let y = 0;
  const html = [];
  for (const seg of segments) {
    if (seg !== segments[0]) {
      const idle = segments[segments.indexOf(seg) - 1].start - seg.end;
      html.push('<div class="gap" style="top:' + y + 'px;height:18px">idle ' + secs(idle) + "</div>");
      y += 20;
    }
    seg.y = y;
    y += Math.max(18, (seg.end - seg.start) * scale);
  }
  const yOf = t => {
    for (const seg of segments) if (t >= seg.start - 20 && t <= seg.end + 0.001) return seg.y + Math.max(0, seg.end - t) * scale;
    return y;
  };
  // Build marks on the left axis, and a queue box per unfinished build.
  for (const b of recent) {
    const top = yOf(b.finished_at == null ? now : b.finished_at);
    const c = b.counts;
    html.push('<div class="mark" style="top:' + yOf(b.created_at) + 'px"><span title="build #' + b.build_id + " at " + esc(b.revision) + '">' + "#" + b.build_id + " " + esc(short(b.revision)) + "</span></div>");
    html.push('<div class="box" data-build="' + b.build_id + '" data-state="' + buildLook(b) + '" style="left:2px;width:' + (axis - 6) + 'px;top:' + top + "px;height:" + Math.max(16, yOf(b.created_at) - top) + 'px" title="build #' + b.build_id + '">' +
      "#" + b.build_id + " " + esc(b.state) + "<br>" + done(c) + "/" + c.total + (c.failed + c.error ? " ✗" + (c.failed + c.error) : "") + (c.flaky ? " ~" + c.flaky : "") + "</div>");
    if (!(b.state === "running" || b.state === "queued")) continue;
    let leasedOpen = 0;
    for (const s of shards) if (s.build_id === b.build_id && shardLook(s.shard).state === "running") leasedOpen += s.shard.tests - done(s.shard.counts || {passed: 0, failed: 0, skipped: 0, error: 0});
    const queued = c.total - done(c) - leasedOpen;
    if (queued > 0) html.push('<div class="box" data-build="' + b.build_id + '" data-state="queued" style="left:' + axis + "px;width:" + (width - 2) + "px;top:" + yOf(now) + 'px;height:30px" title="' + queued + ' tests not leased yet">' + (narrow ? DRAWN.get("queued").letter : "queued") + "<br>" + queued + "</div>");
  }
  // Short shards get a readable minimum height; in a column, a box that would overlap
  // the newer one above it moves down just enough.
  const placed = shards.map(s => {
    const top = yOf(s.shard.finished_at == null ? now : s.shard.finished_at);
    return {s, top, height: Math.max(15, yOf(s.shard.started_at) - top - 1)};
  }).sort((a, b) => a.top - b.top);
  const bottom = new Map();
  for (const p of placed) {
    const floor = bottom.get(p.s.shard.worker);
    if (floor != null && p.top < floor) p.top = floor;
    bottom.set(p.s.shard.worker, p.top + p.height + 1);
  }
  for (const {s: {build_id, shard}, top, height} of placed) {
    const {state, label, why} = shardLook(shard);
    const c = shard.counts || {passed: 0, failed: 0, skipped: 0, error: 0, flaky: 0};
    const bad = c.failed + c.error;
    html.push('<div class="box' + (openLease === shard.lease_id ? " selected" : "") + '" data-state="' + state + '" data-build="' + build_id + '" data-lease="' + shard.lease_id + '" style="left:' + (colX.get(shard.worker) + 1) + "px;width:" + (width - 3) + "px;top:" + top + "px;height:" + height + 'px" title="' + esc(shard.worker) + " shard " + shard.lease_id + " of build #" + build_id + ": " + esc(why) + '">' +
      (narrow ? DRAWN.get(state).letter + (bad ? "✗" + bad : "") + "<br>" + done(c) + "/" + shard.tests
        : esc(label) + " " + done(c) + "/" + shard.tests + (bad ? " ✗" + bad : "") + (c.flaky ? " ~" + c.flaky : "") + "<br>#" + build_id + " · " + secs((shard.finished_at || now) - shard.started_at)) + "</div>");
  }
  document.getElementById("wf-head").innerHTML = '<div style="width:' + axis + 'px">build</div><div style="width:' + width + 'px">queue</div>' +
    columns.map(name => '<div style="width:' + width + 'px" title="' + esc(name) + '">' + esc(narrow ? name.replace(/^.*?(\d+)$/, "$1") : name) + "</div>").join("");
  const body = document.getElementById("wf-body");
  body.style.height = (Math.max(y, ...bottom.values()) + 40) + "px";
  body.style.width = (axis + (columns.length + 1) * width) + "px";
  body.classList.toggle("narrow", narrow);
  body.innerHTML = html.join("");
  if (openLease != null && what.has("shards")) refreshShard();
}
let openLease = null, openBuild = null;
async function openShard(buildId, leaseId) {
  openLease = leaseId; openBuild = buildId;
  const panel = document.getElementById("detail");
  panel.hidden = false;
  panel.innerHTML = "Loading shard " + leaseId + "…";
  await refreshShard(true);
  dirty("shards");
}
let shardRefreshAt = 0;
async function refreshShard(force) {
  if (openLease == null) return;
  if (!force && Date.now() - shardRefreshAt < 2000) return;
  shardRefreshAt = Date.now();
  const leaseId = openLease, buildId = openBuild;
  try {
    const known = S.shards.get(leaseId);
    let shard = known && known.shard;
    if (!shard || !shard.test_ids || !shard.test_ids.length) {
      shard = await getJson("/api/v1/builds/" + buildId + "/shards/" + leaseId);
      S.shards.set(leaseId, {build_id: buildId, shard});
    }
    const tests = await allResults(buildId, force);
    if (openLease !== leaseId) return;
    const look = shardLook(S.shards.get(leaseId).shard);
    const rows = shard.test_ids.map(id => {
      const all = tests.byId.get(id) || [];
      const mine = all.filter(r => r.lease_id === leaseId);
      const r = mine[mine.length - 1] || all[all.length - 1];
      const status = r ? (r.flaky ? "flaky" : r.status) : "pending";
      return {id, r, status, rank: status === "failed" || status === "error" ? 0 : status === "flaky" ? 1 : 2};
    }).sort((a, b) => a.rank - b.rank);
    const panel = document.getElementById("detail");
    panel.innerHTML = '<button class="close" onclick="closeDetail()">close ✕</button><h2>Shard ' + leaseId + " of build " + buildLink(buildId) + " " + stateTag(look.state, look.label) + (look.why !== look.label ? ' <span class="muted">' + esc(look.why) + "</span>" : "") + "</h2>" +
      "<p>worker <b>" + esc(shard.worker) + "</b> · leased " + when(shard.started_at) + (shard.finished_at ? " · ended " + when(shard.finished_at) + " (" + secs(shard.finished_at - shard.started_at) + ")" : " · running") + " · " + shard.tests + " tests" + (shard.withdrawn ? " (" + shard.withdrawn + " given back to idle workers)" : "") + "</p>" +
      '<table><thead><tr><th>test</th><th>status</th><th>time</th></tr></thead><tbody>' +
      rows.map(({id, r, status}) => '<tr data-test="' + esc(id) + '"><td>' + testLink(id) + (r && r.output && status !== "passed" ? "<pre>" + esc(r.output) + "</pre>" : "") + "</td><td>" + stateTag(status) + "</td><td>" + (r ? secs(r.duration_s) : "") + "</td></tr>").join("") + "</tbody></table>";
  } catch (error) {
    document.getElementById("detail").textContent = "Cannot load shard " + leaseId + ": " + error.message;
  }
}
function closeDetail() { openLease = null; document.getElementById("detail").hidden = true; dirty("shards"); }

// ---- console ----
function renderConsole() {
  const pushByBuild = new Map(S.pushes.map(p => [p.build_id, p]));
  const rows = [...S.changes.values()].sort((a, b) => b.sequence - a.sequence).map(c => {
    const b = c.build_id != null ? S.builds.get(c.build_id) : null;
    const push = b ? pushByBuild.get(b.build_id) : null;
    const counts = b ? b.counts : null;
    return '<tr data-revision="' + esc(c.revision) + '"><td>' + c.sequence + '</td><td class="mono">' + esc(short(c.revision)) + "</td><td>" + esc(c.author) + "</td><td>" + esc(firstLine(c.message)) +
      (c.culprit_of != null ? ' <span class="culprit">✗ CULPRIT of ' + buildLink(c.culprit_of) + "</span>" : "") + "</td><td>" + (c.tags.length ? esc(c.tags.join(", ")) : '<span class="muted">(none: full run)</span>') + "</td><td>" +
      (b ? buildLink(b.build_id) : '<span class="muted">waiting</span>') + "</td><td>" + (b ? stateTag(b.state) : stateTag("queued")) + "</td><td>" +
      (counts ? done(counts) + " / " + counts.total : "") + "</td><td>" + (counts ? counts.failed + counts.error : "") + "</td><td>" + (counts ? counts.flaky || 0 : "") + "</td><td>" +
      (push ? stateTag(push.state) + (push.attempts > 1 ? " " + push.attempts + " attempts" : "") : '<span class="muted">—</span>') + "</td></tr>";
  });
  document.getElementById("view").innerHTML = "<h2>Console: every change, newest first</h2><table id=\"console\"><thead><tr><th>#</th><th>revision</th><th>author</th><th>message</th><th>tags</th><th>build</th><th>verdict</th><th>tests run</th><th>failed</th><th>flaky</th><th>push</th></tr></thead><tbody>" + rows.join("") + "</tbody></table>";
}

// ---- builds list ----
function renderBuilds() {
  const rows = [...S.builds.values()].sort((a, b) => b.build_id - a.build_id).map(b =>
    '<tr data-build="' + b.build_id + '"><td>' + buildLink(b.build_id) + (b.kind === "probe" ? " probe of " + buildLink(b.probe_of) : "") + "</td><td>" + stateTag(b.state) + '</td><td class="mono">' + esc(short(b.revision)) + "</td><td>" + b.changes.length + (b.full_run ? " (full run)" : " [" + esc(b.tags.join(", ")) + "]") + "</td><td>" +
    done(b.counts) + " / " + b.counts.total + "</td><td>" + (b.counts.failed + b.counts.error) + "</td><td>" + secs(b.makespan_s) + "</td><td>" + secs(b.lower_bound_s) + "</td><td>" + secs(b.measured_bound_s) + "</td></tr>");
  document.getElementById("view").innerHTML = "<h2>Builds</h2><table><thead><tr><th>build</th><th>state</th><th>revision</th><th>changes</th><th>done / total</th><th>failed</th><th>wall</th><th title=\"planned before the build, from history\">lower bound</th><th title=\"on what the tests really took\">measured bound</th></tr></thead><tbody>" + rows.join("") + "</tbody></table>";
}

// ---- build page ----
let buildRenderToken = 0;
async function renderBuild(arg) {
  const buildId = Number(arg);
  const token = ++buildRenderToken;
  if (!S.builds.has(buildId) || ![...S.shards.values()].some(s => s.build_id === buildId)) {
    try { await loadShards(buildId); } catch (error) { document.getElementById("view").textContent = error.message; return; }
  }
  // The failures first, at once; every result only when asked for ("show all").
  let tests;
  try { tests = await buildFailures(buildId); } catch (error) { tests = {failures: [], results: [], complete: false}; }
  if (token !== buildRenderToken) return;
  if (S.showAll.has(buildId) && !tests.complete) loadRest(buildId).catch(showError);
  const b = S.builds.get(buildId);
  const c = b.counts;
  const now = Date.now() / 1000;
  const elapsed = b.started_at != null ? (b.finished_at || now) - b.started_at : 0;
  const eta = b.state === "running" && done(c) > 0 ? (c.total - done(c)) * elapsed / done(c) : null;
  const pct = n => (100 * n / Math.max(1, c.total)).toFixed(2) + "%";
  const results = tests.results;
  // A retried failure has a later attempt: the failures are the final ones.
  const failures = tests.failures.filter(r => !r.retried);
  const flaky = new Set((b.flaky_tests || []).concat(results.filter(r => r.flaky).map(r => r.test_id)));
  const slowest = results.filter(r => r.worker).sort((x, y) => y.duration_s - x.duration_s).slice(0, 15);
  const shards = [...S.shards.values()].filter(s => s.build_id === buildId).map(s => s.shard);
  const changes = b.changes.map(seq => S.changes.get(seq)).filter(Boolean);
  let html = "<h2>Build #" + b.build_id + " " + stateTag(b.state) + (b.kind === "probe" ? " probe of " + buildLink(b.probe_of) : "") + "</h2>" +
    '<p>revision <span class="mono">' + esc(b.revision) + "</span> · " + (b.full_run ? "full run" : "tags " + esc(b.tags.join(", "))) + " · queued " + when(b.created_at) + (b.started_at ? " · started " + when(b.started_at) : "") + (b.finished_at ? " · ended " + when(b.finished_at) : "") + "</p>" +
    '<div class="bar" title="progress"><span class="s-passed" style="width:' + pct(c.passed) + '"></span><span class="s-failed" style="width:' + pct(c.failed + c.error) + '"></span><span class="s-skipped" style="width:' + pct(c.skipped) + '"></span></div>' +
    '<p id="progress">' + done(c) + " of " + c.total + " tests done · " + c.passed + " passed, " + (c.failed + c.error) + " failed, " + c.skipped + " skipped, " + (c.flaky || 0) + " flaky" + (c.quarantined ? ", " + c.quarantined + " failed in quarantine" : "") + " · " +
    (b.state === "running" ? "elapsed " + secs(elapsed) + (eta != null ? " · ETA " + secs(eta) : "") : b.makespan_s != null ? "took " + secs(b.makespan_s) : "") + (b.lower_bound_s != null ? " · lower bound " + secs(b.lower_bound_s) : "") + (b.measured_bound_s != null ? " (measured " + secs(b.measured_bound_s) + ")" : "") + "</p>";
  if (b.error) html += "<pre>" + esc(b.error) + "</pre>";
  const culprits = b.culprits || [];
  if (culprits.length) html += culprits.map(cu => '<p class="culprit">culprit: <span class="mono">' + esc(short(cu.revision)) + "</span> " + esc(cu.subject) + " (" + esc(cu.author) + ") broke " + cu.tests.map(testLink).join(", ") + "</p>").join("");
  else if (b.culprit != null) { const cu = S.changes.get(b.culprit); html += '<p class="culprit">culprit: ' + (cu ? esc(short(cu.revision)) + " " + esc(firstLine(cu.message)) + " (" + esc(cu.author) + ")" : "change " + b.culprit) + "</p>"; }
  if ((b.not_reproduced || []).length) html += '<p class="warning">did not reproduce when re-run at this revision (flaky, no culprit): ' + b.not_reproduced.map(testLink).join(", ") + "</p>";
  if ((b.collected || []).length) html += '<p class="muted" id="collected">collected only ' + b.collected.map(p => '<span class="mono">' + esc(p) + "</span>").join(", ") + " (what its tags reach)</p>";
  if (b.missed_by_tags) html += "<p>missed by tags: change " + b.missed_by_tags.change + " [" + esc(b.missed_by_tags.tags.join(", ")) + "] in build " + buildLink(b.missed_by_tags.build_id) + "</p>";
  html += '<h2>Failures (' + failures.length + ')</h2>' + (failures.length ? '<table id="failures"><thead><tr><th>test</th><th>status</th><th>worker</th><th>attempt</th><th>time</th></tr></thead><tbody>' +
    failures.map(r => '<tr data-test="' + esc(r.test_id) + '"><td>' + testLink(r.test_id) + "<pre>" + esc(r.output || "(no output)") + "</pre></td><td>" + stateTag(r.status) + "</td><td>" + esc(r.worker || "(not run)") + "</td><td>" + r.attempt + "</td><td>" + secs(r.duration_s) + "</td></tr>").join("") + "</tbody></table>" : '<p class="muted">none' + (b.state === "running" ? " so far" : "") + "</p>");
  html += "<h2>Flaky tests (" + flaky.size + ")</h2>" + (flaky.size ? "<ul>" + [...flaky].map(id => "<li>" + testLink(id) + "</li>").join("") + "</ul>" : '<p class="muted">none</p>');
  html += "<h2>Changes</h2><ul>" + changes.map(ch => '<li><span class="mono">' + esc(short(ch.revision)) + "</span> " + esc(firstLine(ch.message)) + " — " + esc(ch.author) + (ch.culprit_of != null ? ' <span class="culprit">culprit</span>' : "") + "</li>").join("") + "</ul>";
  html += "<h2>Shard timeline</h2>" + gantt(b, shards, now);
  if (!S.showAll.has(buildId)) {
    html += '<h2>All results</h2><p><button id="show-all" onclick="showAllResults(' + buildId + ')">show all ' + done(c) + " results</button> " +
      '<span class="muted">(slowest tests, every outcome; fetched page by page)</span></p>';
  } else {
    html += "<h2>Slowest tests" + (tests.complete ? "" : " so far") + "</h2><table><thead><tr><th>test</th><th>time</th><th>worker</th><th>status</th></tr></thead><tbody>" +
      slowest.map(r => "<tr><td>" + testLink(r.test_id) + "</td><td>" + secs(r.duration_s) + "</td><td>" + esc(r.worker) + "</td><td>" + stateTag(r.status) + "</td></tr>").join("") + "</tbody></table>";
    html += "<h2>All results (" + results.length + (tests.complete ? "" : ", loading more…") + ')</h2><table id="results"><thead><tr><th>test</th><th>status</th><th>attempt</th><th>worker</th><th>time</th></tr></thead><tbody>' +
      results.map(r => '<tr data-test="' + esc(r.test_id) + '"><td>' + testLink(r.test_id) + "</td><td>" + stateTag(r.flaky ? "flaky" : r.status) + "</td><td>" + r.attempt + "</td><td>" + esc(r.worker || "(not run)") + "</td><td>" + secs(r.duration_s) + "</td></tr>").join("") + "</tbody></table>";
  }
  document.getElementById("view").innerHTML = html;
}
// The build page's "show all": every result of the build, page by page.
function showAllResults(buildId) {
  S.showAll.add(buildId);
  dirty("all");
}
function gantt(b, shards, now) {
  if (!shards.length) return '<p class="muted">no shard leased yet</p>';
  const start = Math.min(...shards.map(s => s.started_at));
  const last = Math.max(...shards.map(s => s.finished_at || now));
  // A lower bound far past the shards (planned before the workers joined) would squash
  // the chart: then it is written, not drawn.
  const lbOnChart = b.lower_bound_s != null && b.lower_bound_s <= 2 * Math.max(1, last - start);
  const end = Math.max(last, start + (lbOnChart ? b.lower_bound_s : 0) + 0.001);
  const span = Math.max(0.001, end - start);
  const at = t => (100 * (t - start) / span).toFixed(3) + "%";
  const byWorker = new Map();
  for (const s of shards) { if (!byWorker.has(s.worker)) byWorker.set(s.worker, []); byWorker.get(s.worker).push(s); }
  const names = [...byWorker.keys()].sort((x, y) => x.localeCompare(y, undefined, {numeric: true}));
  let html = '<div class="gantt" id="gantt">';
  for (const name of names) {
    html += '<div class="row"><div class="name">' + esc(name) + '</div><div class="lane">' + byWorker.get(name).map(s => {
      const {state, label, why} = shardLook(s);
      return '<div class="seg s-' + state + '" data-state="' + state + '" data-lease="' + s.lease_id + '" style="left:' + at(s.started_at) + ";width:" + (100 * ((s.finished_at || now) - s.started_at) / span).toFixed(3) + '%" title="shard ' + s.lease_id + ": " + s.tests + " tests, " + esc(why) + '">' + esc(label) + "</div>";
    }).join("") + "</div></div>";
  }
  if (b.lower_bound_s != null && !lbOnChart) html += '<p id="lower-bound">lower bound ' + secs(b.lower_bound_s) + " (for the workers live when it was planned): off the chart</p>";
  if (lbOnChart) html += '<div class="row" style="position:absolute;top:0;bottom:0;left:9rem;right:0;height:auto;border:0;pointer-events:none"><div class="lb" id="lower-bound" style="left:' + at(start + b.lower_bound_s) + '"><span>lower bound ' + secs(b.lower_bound_s) + "</span></div></div>";
  return html + '</div><p class="muted">0 = first lease; the dashed line is the scheduler\'s lower bound for the fleet it had.</p>';
}

// ---- test page ----
async function renderTest(arg) {
  const id = decodeURIComponent(arg);
  const view = document.getElementById("view");
  let t;
  try { t = await getJson("/api/v1/tests?id=" + encodeURIComponent(id)); } catch (error) { view.textContent = error.message; return; }
  if (currentRoute().arg !== arg) return;
  const max = Math.max(0.001, ...t.runs.map(r => r.duration_s));
  view.innerHTML = '<h2>Test <span class="mono">' + esc(t.test_id) + "</span></h2>" +
    "<p>tags: " + (t.tags.length ? esc(t.tags.join(", ")) : '<span class="muted">none</span>') + " · flake rate " + (100 * t.flake_rate).toFixed(1) + "% over " + t.runs.length + " builds · recent durations " + t.recent_durations_s.map(secs).join(", ") + "</p>" +
    "<p>depends on: " + (t.depends_on.length ? t.depends_on.map(testLink).join(", ") : '<span class="muted">nothing</span>') + "<br>needed by: " + (t.dependants.length ? t.dependants.map(testLink).join(", ") : '<span class="muted">nothing</span>') + "</p>" +
    '<div class="durations" title="duration per build, oldest left">' + t.runs.slice().reverse().map(r => '<span class="s-' + (r.flaky ? "flaky" : r.status) + '" style="height:' + Math.max(2, 60 * r.duration_s / max) + 'px" title="#' + r.build_id + " " + r.status + " " + secs(r.duration_s) + '"></span>').join("") + "</div>" +
    '<table id="runs"><thead><tr><th>build</th><th>revision</th><th>outcome</th><th>time</th><th>attempts</th><th>worker</th></tr></thead><tbody>' +
    t.runs.map(r => "<tr><td>" + buildLink(r.build_id) + '</td><td class="mono">' + esc(short(r.revision)) + "</td><td>" + stateTag(r.flaky ? "flaky" : r.status) + (r.output && r.status !== "passed" ? "<pre>" + esc(r.output) + "</pre>" : "") + "</td><td>" + secs(r.duration_s) + "</td><td>" + r.attempts + "</td><td>" + esc(r.worker || "") + "</td></tr>").join("") + "</tbody></table>";
}

// ---- workers ----
function renderWorkers() {
  // The current shard comes from the live shard events; the list itself is polled.
  const running = new Map();
  for (const s of S.shards.values()) if (shardLook(s.shard).state === "running") running.set(s.shard.worker, s);
  const rows = S.workers.slice().sort((a, b) => a.name.localeCompare(b.name, undefined, {numeric: true})).map(w => {
    const s = running.get(w.name);
    const current = s ? "shard " + s.shard.lease_id + " of " + buildLink(s.build_id) + " · " + done(s.shard.counts) + "/" + s.shard.tests + " tests" : '<span class="muted">idle</span>';
    return '<tr data-worker="' + esc(w.name) + '"><td>' + esc(w.name) + "</td><td>" + stateTag(w.lost ? "lost" : w.benched_until ? "benched" : "online") + (w.benched_until ? ' <span class="muted">until ' + when(w.benched_until) + "</span>" : "") + "</td><td>" + speed(w.slowness) + "</td><td>" + current + "</td><td>" + ago(w.last_seen) + "</td></tr>";
  });
  document.getElementById("view").innerHTML = "<h2>Workers (" + S.workers.length + ", " + S.workers.filter(w => w.lost).length + " lost)</h2><table><thead><tr><th>worker</th><th>state</th><th>speed</th><th>current shard</th><th>last heartbeat</th></tr></thead><tbody>" + rows.join("") + "</tbody></table>";
}

// How long a worker takes for a test against the others, as its results show (the
// scheduler gives a slower one less work): 1 (or missing, from an older master) is alike.
function speed(slowness) {
  if (slowness == null || Math.abs(slowness - 1) < 0.005) return '<span class="muted">as fast as the others</span>';
  return slowness > 1 ? "<b>" + slowness.toFixed(1) + "× slower</b>" : (1 / slowness).toFixed(1) + "× faster";
}

// ---- flaky tests and quarantine ----
async function renderFlaky() {
  const view = document.getElementById("view");
  let flaky, quarantine;
  try { [flaky, quarantine] = await Promise.all([getJson("/api/v1/flaky"), getJson("/api/v1/quarantine")]); } catch (error) { view.textContent = error.message; return; }
  if (currentRoute().name !== "flaky") return;
  view.innerHTML = "<h2>Flaky tests (" + flaky.tests.length + ")</h2>" +
    (flaky.tests.length ? '<table id="flaky"><thead><tr><th>test</th><th>flake rate</th><th>flaky / runs</th><th>last flaked</th><th>quarantined</th></tr></thead><tbody>' +
      flaky.tests.map(t => "<tr><td>" + testLink(t.test_id) + "</td><td>" + (100 * t.flake_rate).toFixed(1) + "%</td><td>" + t.flaky + " / " + t.runs + "</td><td>" + (t.last_flaky_at ? ago(t.last_flaky_at) : "") + "</td><td>" + (t.quarantined ? "yes" : "no") + "</td></tr>").join("") + "</tbody></table>"
      : '<p class="muted">no test flaked in its recent runs</p>') +
    "<h2>Quarantine (" + quarantine.quarantined.length + ")</h2>" +
    (quarantine.quarantined.length ? '<table id="quarantine"><thead><tr><th>test</th><th>reason</th><th>by</th><th>since</th><th>until</th></tr></thead><tbody>' +
      quarantine.quarantined.map(q => "<tr><td>" + testLink(q.test_id) + "</td><td>" + esc(q.reason) + "</td><td>" + esc(q.by) + "</td><td>" + when(q.since) + "</td><td>" + new Date(q.expires_at * 1000).toLocaleString() + "</td></tr>").join("") + "</tbody></table>"
      : '<p class="muted">no test is quarantined</p>');
}

