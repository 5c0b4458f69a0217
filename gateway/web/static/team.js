// The team portal: this month's spend against the budget, requests and images per day, by model
// and by provider, how close the team is to its rate limits now, and its keys (never a secret).
// From GET /v1/usage, GET /v1/team and a dry run (the admission figures), with the team key.

import { $, Session, el, teamDisabledNotice, usd, when } from "./common.js";
import { barChart } from "./charts.js";

const SUCCEEDED = "succeeded requests";
const monthField = $("month");
monthField.value = new Date().toISOString().slice(0, 7);

const session = new Session("team", async (signedIn) => {
  $("team-data").hidden = true;
  $("team-hint").hidden = signedIn;
  if (signedIn) await load();
});

function cells(...values) {
  return el("tr", {}, ...values.map((v, i) => el("td", { class: i ? "num" : null, text: String(v) })));
}

function meter(share) {
  const bar = el("div", { class: share >= 0.9 ? "meter high" : "meter" }, el("span"));
  bar.firstChild.style.width = `${Math.min(100, Math.round(share * 100))}%`;
  return bar;
}

async function load() {
  const month = monthField.value;
  const query = month ? `?month=${encodeURIComponent(month)}` : "";
  const [usage, team] = await Promise.all([session.json(`/v1/usage${query}`), session.json(`/v1/team${query}`)]);
  $("team-name").textContent = `Team ${team.name}`;
  $("spent").textContent = usd(usage.spent_usd);
  $("budget").textContent = usd(team.monthly_budget_usd);
  const share = team.monthly_budget_usd > 0 ? usage.spent_usd / team.monthly_budget_usd : 1;
  $("spent-share").textContent = `${(share * 100).toFixed(1)}%`;
  $("spend-meter").firstChild.style.width = `${Math.min(100, share * 100)}%`;
  $("spend-meter").classList.toggle("high", share >= 0.9);
  teamDisabledNotice(team.disabled);
  $("requests").textContent = String(usage.requests);
  $("succeeded").textContent = String(usage.requests - usage.failed_requests);
  $("images").textContent = String(usage.images);
  $("failed").textContent = String(usage.failed_requests);

  // The per-day rows (and so the chart and the by-model table) count succeeded requests only: a
  // failed one is charged nothing and is counted in the month's totals alone.
  const days = new Map();
  const models = new Map();
  for (const row of usage.by_day) {
    const day = days.get(row.date) || { label: row.date, values: { [SUCCEEDED]: 0, images: 0 } };
    day.values[SUCCEEDED] += row.requests;
    day.values.images += row.images;
    days.set(row.date, day);
    const model = models.get(row.model) || { requests: 0, images: 0, spent: 0 };
    model.requests += row.requests;
    model.images += row.images;
    model.spent += row.spent_usd;
    models.set(row.model, model);
  }
  $("daily-chart").replaceChildren(barChart([...days.values()], [SUCCEEDED, "images"], `Succeeded requests and their images per day, ${usage.month}`));
  $("by-model").replaceChildren(...[...models].map(([name, m]) => cells(name, m.requests, m.images, usd(m.spent))));
  $("by-provider").replaceChildren(...team.by_provider.map((p) => cells(p.provider, p.requests, p.images, usd(p.charged_usd))));
  $("keys").replaceChildren(
    ...team.keys.map((k) =>
      el("tr", { "data-key": k.id },
        el("td", { text: k.current ? `${k.name || "(no name)"} (this key)` : k.name || "(no name)" }),
        el("td", { text: `${k.prefix}…` }),
        el("td", { text: when(k.created) }),
        el("td", { "data-field": "last-used", text: when(k.last_used) }),
      ),
    ),
  );
  await limits(team);
  $("team-data").hidden = false;
}

// How close the team is to its limits now: the admission figures of a dry run (nothing counted).
async function limits(team) {
  const quote = await session.json("/v1/images/generations?dryRun=true", { method: "POST", json: { prompt: "limits" } });
  const adm = quote.admission;
  const rows = [
    ["requests per minute", team.limits.requests_per_minute - adm.requests_remaining, team.limits.requests_per_minute],
    ["images per minute", team.limits.images_per_minute - adm.images_remaining, team.limits.images_per_minute],
    ["in flight", adm.in_flight, adm.max_in_flight],
  ];
  $("limits").replaceChildren(
    ...rows.map(([name, used, of]) =>
      el("tr", { "data-limit": name }, el("td", { text: name }), el("td", { class: "num", text: String(used) }),
        el("td", { class: "num", text: String(of) }), el("td", {}, meter(of ? used / of : 0))),
    ),
  );
}

monthField.addEventListener("change", () => session.key && load().catch((err) => session.rejected(err)));
session.start();
