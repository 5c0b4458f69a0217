// The admin pages: teams (create, edit budget and limits), their keys (create, shown once with a
// copy button; revoke), usage for any team and month with the CSV invoice, and the routes' live
// health (GET /admin/routes). Every action is the admin API's, called with the admin key.

import { $, Session, el, errorOf, show, usd, when } from "./common.js";

let teams = [];
let chosen = null; // the team whose keys are shown

const session = new Session("admin", async (signedIn) => {
  $("admin-data").hidden = !signedIn;
  $("admin-hint").hidden = signedIn;
  if (!signedIn) return;
  await loadTeams();
  await Promise.all([loadUsage(), loadRoutes()]);
});

const num = (id) => ($(id).value.trim() === "" ? undefined : Number($(id).value));

async function loadTeams() {
  teams = (await session.json("/admin/teams")).data;
  $("teams").replaceChildren(
    ...teams.map((t) => {
      const edit = el("button", { type: "button", text: "Edit" });
      edit.addEventListener("click", () => editTeam(t));
      const keys = el("button", { type: "button", text: "Keys" });
      keys.addEventListener("click", () => chooseTeam(t));
      return el("tr", { "data-team": t.id, class: t.disabled ? "disabled" : null },
        el("td", { text: t.name }), el("td", { text: t.id }),
        el("td", { class: t.disabled ? "error" : "ok", "data-field": "state", text: t.disabled ? "disabled" : "active" }),
        el("td", { class: "num", text: usd(t.monthly_budget_usd) }),
        el("td", { class: "num", text: String(t.limits.requests_per_minute) }),
        el("td", { class: "num", text: String(t.limits.images_per_minute) }),
        el("td", { class: "num", text: String(t.limits.max_in_flight) }),
        el("td", { text: t.allow_provider_pinning ? "yes" : "no" }),
        el("td", { class: "buttons" }, edit, " ", keys, " ", toggleButton(t)));
    }),
  );
  const select = $("usage-team");
  const previous = select.value;
  select.replaceChildren(el("option", { value: "", text: "all teams" }), ...teams.map((t) => el("option", { value: t.id, text: t.name })));
  select.value = previous;
}

// Disabling takes two clicks (every request of the team's keys is refused at once, for every
// caller); enabling one.
function toggleButton(team) {
  const button = el("button", { type: "button", text: team.disabled ? "Enable" : "Disable" });
  button.addEventListener("click", async () => {
    if (!team.disabled && button.dataset.armed !== "1") {
      button.dataset.armed = "1";
      button.textContent = "Confirm disable";
      return;
    }
    show($("team-error"), "");
    try {
      await session.json(`/admin/teams/${encodeURIComponent(team.id)}`, { method: "PATCH", json: { disabled: !team.disabled } });
      await loadTeams();
    } catch (err) {
      show($("team-error"), err.message);
    }
  });
  return button;
}

function editTeam(team) {
  $("team-form-title").textContent = `Edit ${team.name}`;
  $("team-id").value = team.id;
  $("team-name").value = team.name;
  $("team-budget").value = String(team.monthly_budget_usd);
  $("team-rpm").value = String(team.limits.requests_per_minute);
  $("team-ipm").value = String(team.limits.images_per_minute);
  $("team-inflight").value = String(team.limits.max_in_flight);
  $("team-pinning").checked = team.allow_provider_pinning;
  $("team-save").textContent = "Save team";
  $("team-new").hidden = false;
}

function newTeamForm() {
  $("team-form").reset();
  $("team-id").value = "";
  $("team-form-title").textContent = "New team";
  $("team-save").textContent = "Create team";
  $("team-new").hidden = true;
}

async function saveTeam(event) {
  event.preventDefault();
  show($("team-error"), "");
  const id = $("team-id").value;
  const limits = { requests_per_minute: num("team-rpm"), images_per_minute: num("team-ipm"), max_in_flight: num("team-inflight") };
  const body = { name: $("team-name").value.trim(), limits, allow_provider_pinning: $("team-pinning").checked };
  const budget = num("team-budget");
  if (budget !== undefined) body.monthly_budget_usd = budget;
  try {
    const team = await session.json(id ? `/admin/teams/${encodeURIComponent(id)}` : "/admin/teams", { method: id ? "PATCH" : "POST", json: body });
    newTeamForm();
    await loadTeams();
    await chooseTeam(team);
    await loadUsage();
  } catch (err) {
    show($("team-error"), err.param ? `${err.param}: ${err.message}` : err.message);
  }
}

async function chooseTeam(team) {
  chosen = team;
  $("keys-team").textContent = team.name;
  $("key-form").hidden = false;
  $("new-key").hidden = true;
  await loadKeys();
}

async function loadKeys() {
  const keys = (await session.json(`/admin/teams/${encodeURIComponent(chosen.id)}/keys`)).data;
  $("keys").replaceChildren(
    ...keys.map((k) => {
      // Two steps: a revoked key stops working at once, for every caller.
      const revoke = el("button", { type: "button", text: "Revoke" });
      revoke.addEventListener("click", async () => {
        if (revoke.dataset.armed !== "1") {
          revoke.dataset.armed = "1";
          revoke.textContent = "Confirm revoke";
          return;
        }
        try {
          await session.json(`/admin/keys/${encodeURIComponent(k.id)}`, { method: "DELETE" });
          await loadKeys();
        } catch (err) {
          show($("key-error"), err.message);
        }
      });
      return el("tr", { "data-key": k.id },
        el("td", { text: k.name || "(no name)" }), el("td", { text: `${k.prefix}…` }),
        el("td", { text: when(k.created) }),
        el("td", { "data-field": "last-used", text: when(k.last_used) }),
        el("td", {}, revoke));
    }),
  );
}

async function createKey(event) {
  event.preventDefault();
  show($("key-error"), "");
  try {
    const made = await session.json(`/admin/teams/${encodeURIComponent(chosen.id)}/keys`, { method: "POST", json: { name: $("key-name").value.trim() } });
    $("key-name").value = "";
    $("new-key-value").textContent = made.key;
    $("new-key").hidden = false;
    await loadKeys();
  } catch (err) {
    show($("key-error"), err.message);
  }
}

function usageQuery(format) {
  const params = new URLSearchParams({ format });
  if ($("usage-team").value) params.set("team_id", $("usage-team").value);
  if ($("usage-month").value) params.set("month", $("usage-month").value);
  return `/admin/usage?${params}`;
}

async function loadUsage() {
  const report = await session.json(usageQuery("json"));
  $("usage").replaceChildren(
    ...report.teams.map((u) =>
      el("tr", { "data-team": u.team_id },
        el("td", { text: u.team_name }),
        ...[u.requests, u.images, u.failed_requests].map((v) => el("td", { class: "num", text: String(v) })),
        el("td", { class: "num", text: usd(u.spent_usd) }), el("td", { class: "num", text: usd(u.budget_usd) })),
    ),
  );
}

// The CSV comes with the admin key in its header, so it is fetched, then saved from a blob URL.
async function downloadCsv() {
  const response = await session.fetch(usageQuery("csv"));
  if (!response.ok) {
    show($("auth-error"), (await errorOf(response)).message);
    return;
  }
  const url = URL.createObjectURL(await response.blob());
  const month = $("usage-month").value || new Date().toISOString().slice(0, 7);
  const link = el("a", { href: url, download: `usage-${month}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

const STATUS = {
  healthy: ["ok", "healthy"],
  saturated: ["error", "saturated (queue full)"],
  unhealthy: ["error", "unhealthy"],
  not_configured: ["muted", "not configured"],
  not_probed: ["muted", "not probed yet"],
};

const seconds = (s) => (s === null || s === undefined ? "–" : `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`);

function breakerText(breaker) {
  if (!breaker) return "–";
  const state = breaker.state.replace("_", "-");
  return breaker.opened_at ? `${state} since ${when(Math.floor(breaker.opened_at)).slice(11)}` : state;
}

// /ready says whether the gateway takes traffic; /admin/routes what the router sees of each route.
async function loadRoutes() {
  const [response, board] = await Promise.all([session.fetch("/ready"), session.json("/admin/routes")]);
  const ready = await response.json();
  $("ready").textContent = ready.ready ? "Ready: Redis reachable and a route healthy." : "Not ready.";
  $("routes").replaceChildren(
    ...board.data.map((r) => {
      const [cls, label] = STATUS[r.status] || ["", r.status];
      const queue = r.queue_depth === null ? "–" : `${r.queue_depth} queued, wait ${seconds(r.expected_wait_s)}`;
      const latency = r.latency && r.latency.samples
        ? `p95 ${seconds(r.latency.p95_s)}, avg ${seconds(r.latency.ewma_s)} (${r.latency.samples})`
        : "no samples";
      return el("tr", { "data-route": `${r.provider}/${r.model}`, "data-status": r.status },
        el("td", { text: r.model }), el("td", { text: r.provider }),
        el("td", { class: cls, "data-field": "status", text: label }),
        el("td", { class: r.breaker && r.breaker.state !== "closed" ? "error" : null, "data-field": "breaker", text: breakerText(r.breaker) }),
        el("td", { "data-field": "queue", text: queue }),
        el("td", { "data-field": "latency", text: latency }),
        el("td", { text: r.detail }));
    }),
  );
}

$("usage-month").value = new Date().toISOString().slice(0, 7);
$("team-form").addEventListener("submit", saveTeam);
$("team-new").addEventListener("click", newTeamForm);
$("key-form").addEventListener("submit", createKey);
$("copy-key").addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText($("new-key-value").textContent);
    $("copy-key").textContent = "Copied";
  } catch {
    $("copy-key").textContent = "Select the key to copy it";
  }
});
$("usage-team").addEventListener("change", loadUsage);
$("usage-month").addEventListener("change", loadUsage);
$("usage-csv").addEventListener("click", downloadCsv);
$("routes-refresh").addEventListener("click", () => loadRoutes().catch((err) => show($("auth-error"), err.message)));
session.start();
