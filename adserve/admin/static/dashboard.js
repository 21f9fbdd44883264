// adserve admin dashboard. No framework, no build step, nothing from a CDN.
// The API key lives in the `apiKey` variable of this closure only: never in localStorage,
// sessionStorage, cookies or the URL. All API data is rendered with textContent.
"use strict";
(function () {
  const API = "/admin/v1";
  const DAYS = 14;
  const SVG_NS = "http://www.w3.org/2000/svg";
  let apiKey = null;

  const $ = (id) => document.getElementById(id);

  class ApiError extends Error {
    constructor(status, detail) {
      super(detail);
      this.status = status;
    }
  }

  async function api(path) {
    const response = await fetch(API + path, {
      headers: { Authorization: "Bearer " + apiKey, Accept: "application/json" },
      credentials: "omit",
      cache: "no-store",
    });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail || detail;
      } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    return response.json();
  }

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function svg(tag, attributes) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, value] of Object.entries(attributes || {})) node.setAttribute(name, String(value));
    return node;
  }

  function money(value) {
    return value === null || value === undefined ? "—" : Number(value).toFixed(2);
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  // ---- pacing ----

  // Elapsed share of the campaign's local day, from its IANA timezone.
  function elapsedShare(timeZone, now) {
    let parts;
    try {
      parts = new Intl.DateTimeFormat("en-GB", {
        timeZone: timeZone || "UTC", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
      }).formatToParts(now);
    } catch (_) {
      return null;
    }
    const get = (type) => Number((parts.find((p) => p.type === type) || { value: "0" }).value);
    return (get("hour") * 3600 + get("minute") * 60 + get("second")) / 86400;
  }

  // pacing = spend_today / (daily_budget × elapsed share of the local day); 1 is on pace.
  function pacing(campaign, now) {
    if (!campaign.daily_budget) return null;
    const share = elapsedShare(campaign.timezone, now);
    if (share === null) return null;
    return campaign.spend_today / (campaign.daily_budget * Math.max(share, 1 / 1440));
  }

  function pacingCell(campaign, now) {
    const td = el("td");
    const value = pacing(campaign, now);
    if (value === null) {
      td.textContent = "no daily budget";
      return td;
    }
    const state = value > 1.2 ? "over" : value < 0.8 ? "under" : "on";
    const wrap = el("div", null, "pacing " + state);
    wrap.dataset.pacing = value.toFixed(4);
    const track = el("div", null, "track");
    const fill = el("div", null, "fill");
    fill.style.width = Math.min(100, value * 50).toFixed(1) + "%"; // 50% of the track = on pace
    track.appendChild(fill);
    wrap.appendChild(track);
    const label = { over: "ahead", under: "behind", on: "on pace" }[state];
    wrap.appendChild(el("span", value.toFixed(2) + "× " + label));
    td.appendChild(wrap);
    return td;
  }

  // ---- campaigns ----

  async function loadCampaigns() {
    const page = await api("/campaigns?limit=500");
    const body = $("campaigns").tBodies[0];
    body.replaceChildren();
    const now = new Date();
    for (const c of page.items) {
      const row = el("tr");
      row.dataset.campaignId = String(c.id);
      row.appendChild(el("td", c.name, "name"));
      row.appendChild(el("td", c.status));
      row.appendChild(el("td", String(c.pricing).toUpperCase()));
      row.appendChild(el("td", money(c.bid), "num"));
      row.appendChild(el("td", money(c.spend_today), "num"));
      row.appendChild(el("td", money(c.daily_budget), "num"));
      row.appendChild(pacingCell(c, now));
      row.appendChild(el("td", money(c.spend_total), "num"));
      body.appendChild(row);
    }
    $("campaign-count").textContent =
      page.total > page.items.length ? `(${page.items.length} of ${page.total})` : `(${page.total})`;
  }

  // ---- charts ----

  function isoDay(date) {
    return date.toISOString().slice(0, 10);
  }

  // Days before today come from the rollups behind /reports; today, and any day the rollup has
  // not reached, from the live /analytics/daily.
  async function loadSeries() {
    const today = new Date();
    const first = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - (DAYS - 1)));
    const days = [];
    for (let i = 0; i < DAYS; i++) days.push(isoDay(new Date(first.getTime() + i * 86400000)));
    const [report, live] = await Promise.all([
      api(`/reports?group_by=day&from=${days[0]}&limit=500`).catch(() => ({ items: [] })),
      api(`/analytics/daily?days=${DAYS}`),
    ]);
    const byDay = new Map();
    const sources = new Set();
    for (const row of live.items) byDay.set(row.day, { ...row, source: "live" });
    for (const row of report.items) {
      if (row.day && row.day !== days[DAYS - 1]) byDay.set(row.day, { ...row, source: "reports" });
    }
    const series = days.map((day) => {
      const row = byDay.get(day);
      if (row) sources.add(row.source);
      return {
        day,
        impressions: row ? row.impressions : 0,
        clicks: row ? row.clicks : 0,
        ctr: row && row.impressions ? row.clicks / row.impressions : 0,
        spend: row ? row.spend : 0,
      };
    });
    $("chart-source").textContent = sources.size ? "(" + [...sources].sort().join(" + ") + ")" : "(no traffic yet)";
    return series;
  }

  function barChart(figure, series, field, format) {
    figure.querySelectorAll("svg").forEach((node) => node.remove());
    const width = 320, height = 150, pad = 22;
    const max = Math.max(...series.map((d) => d[field]), 0);
    const root = svg("svg", {
      viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "data-field": field,
      "data-points": series.length,
    });
    root.appendChild(svg("line", { class: "axis", x1: 0, y1: height - pad, x2: width, y2: height - pad }));
    const step = width / series.length;
    series.forEach((d, i) => {
      const value = d[field];
      const h = max > 0 ? ((height - 2 * pad) * value) / max : 0;
      const bar = svg("rect", {
        class: "bar", x: (i * step + 2).toFixed(1), y: (height - pad - h).toFixed(1),
        width: Math.max(step - 4, 1).toFixed(1), height: h.toFixed(1), "data-day": d.day, "data-value": value,
      });
      const title = svg("title");
      title.textContent = `${d.day}: ${format(value)}`;
      bar.appendChild(title);
      root.appendChild(bar);
    });
    const label = (x, text, anchor) => {
      const node = svg("text", { x, y: height - 6, "text-anchor": anchor });
      node.textContent = text;
      root.appendChild(node);
    };
    label(2, series[0].day.slice(5), "start");
    label(width - 2, series[series.length - 1].day.slice(5), "end");
    const top = svg("text", { x: 2, y: 12 });
    top.textContent = "max " + format(max);
    root.appendChild(top);
    figure.appendChild(root);
  }

  async function loadCharts() {
    const series = await loadSeries();
    barChart($("chart-impressions"), series, "impressions", (v) => String(v));
    barChart($("chart-clicks"), series, "clicks", (v) => String(v));
    barChart($("chart-ctr"), series, "ctr", (v) => (100 * v).toFixed(2) + "%");
    barChart($("chart-spend"), series, "spend", (v) => Number(v).toFixed(2));
  }

  // ---- models (admin keys only) ----

  async function loadModels() {
    const section = $("models-section");
    let page;
    try {
      page = await api("/models?limit=100");
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        section.hidden = true;
        return false;
      }
      throw error;
    }
    const body = $("models").tBodies[0];
    body.replaceChildren();
    for (const m of page.items) {
      const row = el("tr");
      for (const value of [m.kind, m.version, m.status, m.created_at, m.promoted_at || "—", m.reason || ""]) {
        row.appendChild(el("td", value));
      }
      body.appendChild(row);
    }
    if (!page.items.length) {
      const row = el("tr");
      const cell = el("td", "no model versions registered yet");
      cell.colSpan = 6;
      row.appendChild(cell);
      body.appendChild(row);
    }
    section.hidden = false;
    await loadServing();
    return true;
  }

  // What this process's decision pipeline uses right now (the champion may not have loaded yet).
  async function loadServing() {
    const line = $("serving-now");
    try {
      const response = await fetch("/ready", { cache: "no-store", credentials: "omit" });
      const serving = (await response.json()).serving || {};
      const scorer = serving.scorer || {};
      const policy = serving.policy || {};
      const learned = policy.examples_learned == null ? "" : ` (${policy.examples_learned} decisions learned)`;
      line.textContent = `Serving now: scorer ${scorer.kind || "?"} ${scorer.version || "?"} · policy ${policy.kind || "?"} ${policy.version || "?"}${learned}`;
    } catch (error) {
      line.textContent = "Serving now: unknown (" + String(error.message) + ")";
    }
  }

  // ---- session ----

  async function open() {
    showError("");
    try {
      await loadCampaigns(); // also checks the key: 401/403 stop here
    } catch (error) {
      apiKey = null;
      showError(error instanceof ApiError && error.status === 401 ? "That key was not accepted." : String(error.message));
      return;
    }
    $("login-section").hidden = true;
    $("app").hidden = false;
    $("logout").hidden = false;
    const results = await Promise.allSettled([loadCharts(), loadModels()]);
    const failed = results.find((r) => r.status === "rejected");
    if (failed) showError(String(failed.reason && failed.reason.message));
    $("whoami").textContent = results[1].status === "fulfilled" && results[1].value ? "admin key" : "advertiser key";
    document.body.dataset.state = "ready";
  }

  function signOut() {
    apiKey = null;
    $("app").hidden = true;
    $("logout").hidden = true;
    $("login-section").hidden = false;
    $("whoami").textContent = "";
    $("campaigns").tBodies[0].replaceChildren();
    $("models").tBodies[0].replaceChildren();
    document.body.dataset.state = "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("login").addEventListener("submit", (event) => {
      event.preventDefault();
      const input = $("api-key");
      apiKey = input.value.trim();
      input.value = "";
      if (apiKey) open();
    });
    $("logout").addEventListener("click", signOut);
  });
})();
