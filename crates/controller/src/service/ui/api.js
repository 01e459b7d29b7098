// The API as the dashboard uses it: one token per browser tab, kept in
// sessionStorage (gone when the tab closes), sent as `Authorization: Bearer`,
// never put in a URL and never logged.

const KEY = 'faultline.token';

export function token() {
  return sessionStorage.getItem(KEY);
}

export function setToken(t) {
  sessionStorage.setItem(KEY, t);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

/** An API error: the HTTP status and the server's `{error, reason, diagnostics}`. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.reason ? body.reason : `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.diagnostics = (body && body.diagnostics) || [];
  }
}

let onUnauthorized = () => {};

/** Called when the server no longer knows the token (401). */
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

/** One API call; answers the JSON body or throws an ApiError. */
export async function call(method, path, body, t = token()) {
  const headers = { Accept: 'application/json' };
  if (t) headers.Authorization = `Bearer ${t}`;
  const init = { method, headers, cache: 'no-store', credentials: 'omit', referrerPolicy: 'no-referrer' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let json = null;
  if (text) {
    try { json = JSON.parse(text); } catch { json = { reason: text }; }
  }
  if (!resp.ok) {
    // The signed-in token stopped working (not a sign-in attempt with a new one).
    if (resp.status === 401 && t && t === token()) onUnauthorized();
    throw new ApiError(resp.status, json);
  }
  return json;
}

export const get = (path) => call('GET', path);
export const post = (path, body) => call('POST', path, body ?? {});
export const put = (path, body) => call('PUT', path, body);
