// For administrators: every session with a terminate button, the warm
// pools, and the audit log with its verification status.

import { api } from '../api.js';
import { h, fill } from '../dom.js';
import { formatTime } from '../format.js';
import { liveSessionsTable } from '../sessions-table.js';

const AUDIT_PAGE = 50;

export async function adminPage(main, context) {
  const may = context.me.may;
  main.append(h('h1', {}, 'Administration'));
  if (!may.list_all_sessions && !may.read_audit) {
    main.append(h('p', { className: 'error', role: 'alert' }, 'Your permissions do not include listing all sessions or reading the audit log.'));
    return null;
  }
  let stop = null;
  if (may.list_all_sessions) {
    const all = h('div', { id: 'all-sessions' });
    main.append(h('section', { 'aria-labelledby': 'all-title' }, h('h2', { id: 'all-title' }, 'All sessions'), all));
    stop = liveSessionsTable(all, context, { query: 'order=newest&limit=100', showOwner: true, caption: 'All sessions, newest first' });
  }
  if (may.read_metrics) {
    const pools = h('div', { id: 'pools' });
    main.append(h('section', { 'aria-labelledby': 'pools-title' }, h('h2', { id: 'pools-title' }, 'Warm pools'), pools));
    loadPools(pools);
  }
  if (may.read_audit) {
    const status = h('div', { id: 'audit-status', 'aria-live': 'polite' }, h('p', { className: 'hint' }, 'Verifying the audit log...'));
    const records = h('div', { id: 'audit-records' });
    const verify = h('button', { type: 'button', className: 'secondary', id: 'audit-verify' }, 'Verify again');
    const checks = h('input', { type: 'checkbox', id: 'audit-show-checks' });
    main.append(h('section', { 'aria-labelledby': 'audit-title' }, h('h2', { id: 'audit-title' }, 'Audit log'), status,
      h('p', {}, verify, ' ', checks, ' ', h('label', { for: 'audit-show-checks', className: 'inline' }, 'Show allowed permission checks')), records));
    const load = () => loadAudit(status, records, checks.checked);
    verify.addEventListener('click', load);
    checks.addEventListener('change', load);
    load();
  }
  return stop;
}

async function loadPools(target) {
  try {
    const { pools } = await api('GET', '/v1/pools');
    if (pools.length === 0) {
      fill(target, h('p', { className: 'hint' }, 'No profile has a [pool] section, so every session starts cold.'));
      return;
    }
    const rows = pools.map((pool) => h('tr', {},
      h('td', { className: 'mono' }, pool.profile),
      h('td', {}, `${pool.ready} of ${pool.target} (${pool.min} to ${pool.max})`),
      h('td', {}, String(pool.preparing)),
      h('td', {}, String(pool.claims_last_minute)),
      h('td', {}, String(pool.misses_total)),
      h('td', {}, `${Math.round(pool.oldest_age_seconds)} s`),
    ));
    fill(target, h('div', { className: 'table-scroll' }, h('table', {},
      h('caption', { className: 'visually-hidden' }, 'Warm pools by profile'),
      h('thead', {}, h('tr', {}, ['Profile', 'Ready', 'Preparing', 'Claims in the last minute', 'Misses', 'Oldest member'].map((name) => h('th', { scope: 'col' }, name)))),
      h('tbody', {}, rows))));
  } catch (error) {
    fill(target, h('p', { className: 'error', role: 'alert' }, `The warm pools could not be loaded: ${error.message}`));
  }
}

async function loadAudit(status, records, showChecks) {
  let total = 0;
  try {
    const result = await api('GET', '/v1/audit/verify');
    if (result.intact) {
      const v = result.verified;
      total = v.last_seq;
      const signed = v.signed_head_seq == null ? 'no signed checkpoint yet' : `signed up to record ${v.signed_head_seq}`;
      fill(status, h('p', { className: 'ok', id: 'audit-intact' },
        `Intact: ${v.records} records, every hash link checked, ${signed}, ${v.unsigned_tail} records after the last checkpoint.`));
    } else {
      fill(status, h('p', { className: 'error', role: 'alert', id: 'audit-broken' },
        `The audit log is broken at line ${result.line}: ${result.reason}. Records from there on cannot be trusted; see docs/operations.md.`));
    }
  } catch (error) {
    fill(status, h('p', { className: 'error', role: 'alert' }, `The audit log could not be verified: ${error.message}`));
  }
  try {
    const since = Math.max(1, total - AUDIT_PAGE + 1);
    const page = await api('GET', `/v1/audit?since=${since}&limit=${AUDIT_PAGE}`);
    // Allowed permission checks are most of the log, the console's own
    // reads among them, so they are hidden unless asked for.
    const visible = page.records.reverse().filter((record) => showChecks || !(record.kind === 'authz.decision' && record.fields?.allowed === true));
    const rows = visible.map((record) => h('tr', {},
      h('td', { className: 'mono' }, String(record.seq)),
      h('td', {}, formatTime(record.time_unix_ms)),
      h('td', { className: 'mono' }, record.kind),
      h('td', {}, record.actor),
      h('td', { className: 'mono' }, record.session_id ?? ''),
      h('td', { className: 'details mono' }, summarize(record.fields)),
    ));
    fill(records, h('div', { className: 'table-scroll' }, h('table', {},
      h('caption', { className: 'visually-hidden' }, 'The latest audit records, newest first'),
      h('thead', {}, h('tr', {}, ['Seq', 'Time', 'Event', 'Actor', 'Session', 'Details'].map((name) => h('th', { scope: 'col' }, name)))),
      h('tbody', {}, rows))));
  } catch (error) {
    fill(records, h('p', { className: 'error', role: 'alert' }, `The audit records could not be loaded: ${error.message}`));
  }
}

function summarize(fields) {
  return Object.entries(fields || {})
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' ');
}
