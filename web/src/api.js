// Calls to Mayfly's API from a signed-in browser. The session cookie goes
// with every request; state-changing requests repeat the CSRF token.

let csrf = null;

/** An API call that failed: the HTTP status and the problem details. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `The server returned ${status}.`);
    this.status = status;
    this.problem = problem;
  }
}

export function setCsrf(token) {
  csrf = token;
}

export async function api(method, path, body) {
  const headers = { Accept: 'application/json, application/problem+json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (method !== 'GET' && csrf) headers['X-CSRF-Token'] = csrf;

  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
    });
  } catch {
    throw new ApiError(0, { detail: 'The Mayfly server cannot be reached. Check that it is running, then try again.' });
  }

  if (response.status === 204) return null;
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.status === 401 && path !== '/v1/auth/session') {
    window.dispatchEvent(new CustomEvent('mayfly:signed-out'));
  }
  if (!response.ok) {
    throw new ApiError(response.status, data && typeof data === 'object' ? data : { detail: `The server returned ${response.status} ${response.statusText}.` });
  }
  return data;
}

/** Returns the address of a session's attach WebSocket on this server. */
export function attachUrl(id, mode) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = mode ? `?mode=${encodeURIComponent(mode)}` : '';
  return `${scheme}//${location.host}/v1/sessions/${encodeURIComponent(id)}/attach${query}`;
}

/** An API call whose successful response is a file; returns it as a Blob. */
export async function apiFile(method, path) {
  const headers = { Accept: '*/*' };
  if (method !== 'GET' && csrf) headers['X-CSRF-Token'] = csrf;
  let response;
  try {
    response = await fetch(path, { method, headers, credentials: 'same-origin', cache: 'no-store' });
  } catch {
    throw new ApiError(0, { detail: 'The Mayfly server cannot be reached. Check that it is running, then try again.' });
  }
  if (!response.ok) {
    let problem = null;
    try {
      problem = await response.json();
    } catch {
      problem = null;
    }
    throw new ApiError(response.status, problem && typeof problem === 'object' ? problem : { detail: `The server returned ${response.status} ${response.statusText}.` });
  }
  return response.blob();
}
