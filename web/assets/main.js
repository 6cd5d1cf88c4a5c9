"use strict";
// The router and the start: the hash names the view (#/, #/console, #/builds, #/build/ID,
// #/test/ID, #/workers, #/flaky); the clock ticks running boxes; then load and go live.

// ---- router ----
const routes = {waterfall: renderWaterfall, console: renderConsole, builds: renderBuilds, build: renderBuild, test: renderTest, workers: renderWorkers, flaky: renderFlaky};
function currentRoute() {
  const parts = location.hash.replace(/^#\/?/, "").split("/");
  const name = parts[0] || "waterfall";
  const arg = parts.slice(1).join("/");
  return {name: routes[name] ? name : "waterfall", arg, render: routes[name] || renderWaterfall};
}
function onRoute() {
  const route = currentRoute();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("current", a.dataset.route === route.name || (route.name === "build" && a.dataset.route === "builds"));
  document.getElementById("view").innerHTML = "Loading…";
  if (route.name !== "waterfall") closeDetail();
  if (route.name === "workers") getJson("/api/v1/workers").then(w => { S.workers = w; dirty("workers"); }).catch(() => {});
  dirty("all");
}
window.addEventListener("hashchange", onRoute);
document.getElementById("find").addEventListener("submit", event => {
  event.preventDefault();
  const id = event.target.test.value.trim();
  if (id) location.hash = "#/test/" + encodeURIComponent(id);
});
// While something runs, the waterfall's running boxes grow with the clock.
setInterval(() => {
  const route = currentRoute().name;
  const running = [...S.builds.values()].some(b => b.state === "running" || b.state === "queued");
  if (running && (route === "waterfall" || route === "build")) dirty("clock");
  if (route === "workers") dirty("clock");
  renderGate(); // "since … (N s ago)"
}, 1000);
onRoute();
loadAll().then(connect).catch(error => { showError(error); connect(); });
