// What every page shares: the signed-in key (this tab's sessionStorage only, sent as a Bearer
// header, never put in a URL, a cookie or the page), calls to the gateway's JSON API, and errors
// shown as the API words them. Nothing here writes HTML from data: text goes in as textContent.

export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.param = err.param || null;
    this.code = err.code || null;
  }
}

export const $ = (id) => document.getElementById(id);

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "text") node.textContent = String(value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

export function show(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

export async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  return new ApiError(response.status, body);
}

// One sign-in per page kind: "team" (the playground and the team page) or "admin".
export class Session {
  constructor(kind, onChange) {
    this.storageKey = `gateway.${kind}Key`;
    this.kind = kind;
    this.onChange = onChange;
    $("signin").addEventListener("submit", (event) => {
      event.preventDefault();
      const field = $("api-key");
      const key = field.value.trim();
      field.value = "";
      if (key) this.signIn(key);
    });
    $("signout").addEventListener("click", () => this.signOut());
  }

  get key() {
    return sessionStorage.getItem(this.storageKey);
  }

  async start() {
    if (this.key) await this.signIn(this.key);
    else this.render(false);
  }

  async signIn(key) {
    sessionStorage.setItem(this.storageKey, key);
    show($("auth-error"), "");
    try {
      await this.onChange(true);
      this.render(true);
    } catch (err) {
      this.rejected(err);
    }
  }

  signOut(message) {
    sessionStorage.removeItem(this.storageKey);
    show($("notice"), "");
    this.render(false);
    show($("auth-error"), message || "");
    this.onChange(false);
  }

  // A 401 after signing in: the key was revoked (or mistyped). Say so plainly and sign out.
  rejected(err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      const what = this.kind === "admin" ? "admin key" : "API key";
      const hint = this.kind === "admin" ? "" : " It may have been revoked.";
      this.signOut(`This ${what} was not accepted (${err.message}).${hint} Sign in with another key.`);
      return true;
    }
    show($("auth-error"), err.message || String(err));
    return false;
  }

  render(signedIn) {
    $("signin").hidden = signedIn;
    $("signed-in").hidden = !signedIn;
    const key = this.key;
    $("who").textContent = signedIn && key ? `Signed in (${key.slice(0, 9)}…)` : "";
    document.body.classList.toggle("signed-in", signedIn);
  }

  async fetch(path, options = {}) {
    const headers = new Headers(options.headers || {});
    headers.set("Authorization", `Bearer ${this.key}`);
    // A FormData body (an edit's multipart) sets its own Content-Type with the boundary.
    if (options.json !== undefined) {
      headers.set("Content-Type", "application/json");
      options = { ...options, body: JSON.stringify(options.json) };
    }
    return fetch(path, { ...options, headers, credentials: "omit", cache: "no-store" });
  }

  // A JSON call; a refused key signs the page out with the reason before the error is thrown.
  async json(path, options = {}) {
    const response = await this.fetch(path, options);
    if (!response.ok) {
      const err = await errorOf(response);
      if (err.status === 401) this.rejected(err);
      throw err;
    }
    return response.json();
  }
}

// A disabled team's key still signs in (it reads its own team), but every request it sends is
// refused: said once, at the top of the page, until a quote or request is admitted again.
export const TEAM_DISABLED = "team_disabled";

export function teamDisabledNotice(disabled) {
  show($("notice"), disabled
    ? "Your team is disabled by the gateway's admin: every request is refused (and nothing is charged) until it is enabled again."
    : "");
}

export function usd(value) {
  const n = Number(value);
  if (!Number.isFinite(n)) return "–";
  // cents always, and up to 4 decimals where a price has them ($0.0125)
  return `$${n.toFixed(4).replace(/0{1,2}$/, "")}`;
}

// Unix seconds as "2026-12-07 14:03 UTC"; null as "never".
export function when(seconds) {
  if (seconds === null || seconds === undefined) return "never";
  return `${new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}
