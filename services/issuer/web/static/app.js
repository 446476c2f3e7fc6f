// The issuer's page: environments, the Streaming Tokens dialog, Rotating streaming tokens, PATs.
// Every value from the API is put on the page with textContent (never innerHTML): names are data.
import { installErrorReporting, reportError, showBanner } from './errors.js';

installErrorReporting();

const $ = (id) => document.getElementById(id);
const state = {
  session: null,
  environments: [],
  current: null, // the selected environment
  revealed: null, // the last GET .../streaming-tokens answer (plaintext: kept in memory while the dialog is open)
  shown: new Set(), // slots shown in plaintext
  usage: null,
  usagePoll: null,
  progressPoll: null,
  rotated: null,
  patsAfter: null,
  rotationKey: null,
};

// -- the API --------------------------------------------------------------------------------------------

export class ApiFailure extends Error {
  constructor(status, body, what) {
    const message = body && typeof body.message === 'string' ? body.message : `HTTP ${status}`;
    super(`${what}: ${message}`);
    this.status = status;
    this.body = body;
    this.code = body ? (typeof body.error === 'string' ? body.error : body.error && body.error.code) : null;
  }
}

function toLogin() {
  location.assign('/ui/login?reason=ended');
}

async function api(method, path, { body, what = `${method} ${path}`, headers = {} } = {}) {
  const sent = { ...headers };
  if (body !== undefined) sent['Content-Type'] = 'application/json';
  if (method !== 'GET' && state.session) sent['X-CSRF-Token'] = state.session.csrf_token;
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: 'same-origin',
      headers: sent,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiFailure(0, { message: `the issuer cannot be reached (${error})` }, what);
  }
  let data = null;
  if (response.status !== 204) {
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = { message: text.slice(0, 200) };
    }
  }
  if (response.status === 401) {
    toLogin(); // the session ended (expired, logged out, its PAT revoked)
    throw new ApiFailure(401, data, what);
  }
  if (!response.ok) throw new ApiFailure(response.status, data, what);
  return data;
}

// Unexpected failures (5xx, a network error, a bug) go to the banner and the issuer's log.
function failed(error) {
  if (error instanceof ApiFailure && error.status === 401) return;
  const message = error instanceof Error ? error.message : String(error);
  reportError(error instanceof ApiFailure ? 'api' : 'error', message, { stack: error && error.stack });
}

// -- small DOM helpers ------------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'text') node.textContent = String(value);
    else if (key === 'className') node.className = value;
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function when(iso) {
  if (!iso) return 'never';
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return String(iso);
  const seconds = Math.round((Date.now() - moment.getTime()) / 1000);
  const ago =
    seconds < 0 ? 'just now' : seconds < 60 ? `${seconds} s ago` : seconds < 3600 ? `${Math.round(seconds / 60)} min ago` : `${Math.round(seconds / 3600)} h ago`;
  return `${moment.toISOString().replace('T', ' ').slice(0, 19)} UTC (${ago})`;
}

function mask(fingerprint) {
  return `stk_••••••••••••${fingerprint ? ` · fingerprint ${fingerprint.slice(0, 12)}` : ''}`;
}

function openDialog(dialog, opener) {
  dialog.returnFocus = opener || document.activeElement;
  if (!dialog.open) dialog.showModal();
}

for (const dialog of document.querySelectorAll('dialog')) {
  dialog.addEventListener('click', (event) => {
    if (event.target.closest('[data-close]')) dialog.close();
  });
  dialog.addEventListener('close', () => {
    const back = dialog.returnFocus;
    if (back && typeof back.focus === 'function' && document.contains(back)) back.focus();
  });
}

// -- session ---------------------------------------------------------------------------------------------

async function loadSession() {
  state.session = await api('GET', '/ui/session', { what: 'your session' });
  $('who-subject').textContent = state.session.subject;
  $('who-role').textContent = state.session.role;
  if (!state.session.may_admin) {
    $('open-pats').disabled = true;
    $('open-pats').setAttribute('aria-describedby', 'pats-reason');
    $('pats-reason').textContent =
      'Personal access tokens are listed and revoked by admins (a PAT with the admin role, for every environment).';
    $('pats-reason').hidden = false;
  }
}

$('logout').addEventListener('click', async () => {
  try {
    await api('DELETE', '/ui/session', { what: 'log out' });
  } catch (error) {
    if (!(error instanceof ApiFailure && error.status === 401)) failed(error);
    return;
  }
  location.assign('/ui/login?reason=logout');
});

// -- environments ----------------------------------------------------------------------------------------

async function loadEnvironments() {
  const data = await api('GET', '/v1/environments', { what: 'list environments' });
  state.environments = data.environments;
  const list = $('environments');
  list.replaceChildren();
  $('environments-status').textContent = data.environments.length
    ? 'Select your environment.'
    : 'No environment yet: an admin creates one with `streamtoken env create`.';
  for (const env of data.environments) {
    list.append(
      el(
        'li',
        {},
        el(
          'button',
          {
            type: 'button',
            className: 'environment',
            dataset: { environmentId: env.id },
            'aria-pressed': 'false',
            onclick: (event) => selectEnvironment(env.id, event.currentTarget),
          },
          el('span', { className: 'env-id', text: env.id }),
          el('span', { className: 'env-meta', text: `${env.org} / ${env.project} / ${env.name} · generation ${env.generation}` }),
        ),
      ),
    );
  }
  const wanted = new URLSearchParams(location.hash.slice(1)).get('env');
  if (wanted && data.environments.some((e) => e.id === wanted)) selectEnvironment(wanted);
}

function selectEnvironment(id) {
  state.current = state.environments.find((e) => e.id === id) || null;
  if (!state.current) return;
  for (const button of document.querySelectorAll('button.environment')) {
    button.setAttribute('aria-pressed', String(button.dataset.environmentId === id));
  }
  $('environment-heading').textContent = `Environment ${id}`;
  $('environment-settings').hidden = false;
  history.replaceState(null, '', `#env=${encodeURIComponent(id)}`);
}

async function refreshEnvironment() {
  const env = await api('GET', `/v1/environments/${encodeURIComponent(state.current.id)}`, { what: 'the environment' });
  state.current = env;
  state.environments = state.environments.map((e) => (e.id === env.id ? env : e));
  return env;
}

// -- Streaming Tokens dialog --------------------------------------------------------------------------------

function tokenValue(slot) {
  const view = state.revealed;
  const token = view && (slot === 1 ? view.token_1 : view.token_2);
  return token ? token.token : null;
}

function usageOf(slot) {
  const usage = state.usage;
  return usage && Array.isArray(usage.tokens) ? usage.tokens.find((t) => t.slot === slot) || null : null;
}

function clientItems(clients) {
  return clients.map((c) =>
    el(
      'li',
      { className: 'client' },
      el('span', { className: 'client-address', text: c.address || 'unknown address' }),
      ' · ',
      el('span', { className: 'client-agent', text: c.user_agent || 'no user agent' }),
      c.deployment_id ? [' · deployment ', el('code', { className: 'client-deployment', text: c.deployment_id })] : null,
      c.source ? el('span', { className: 'hint', text: ` (${c.source})` }) : null,
      el('span', { className: 'hint', text: ` · last seen ${when(c.last_seen_at)}` }),
    ),
  );
}

function renderToken(container, slot, { tokenId, fingerprint, value, shown, prefix }) {
  const label = `${prefix}-${slot}-label`;
  const input = el('input', {
    id: `${prefix}-${slot}-value`,
    type: 'text',
    readonly: true,
    className: 'token-value',
    'aria-labelledby': label,
    value: shown && value ? value : mask(fingerprint),
  });
  input.value = shown && value ? value : mask(fingerprint);
  const reveal = el('button', {
    type: 'button',
    className: 'reveal',
    'aria-controls': input.id,
    'aria-pressed': String(Boolean(shown)),
    text: shown ? `Hide Token ${slot}` : `Reveal Token ${slot}`,
    onclick: () => toggleReveal(slot, prefix).catch(failed),
  });
  const copy = el('button', {
    type: 'button',
    className: 'copy',
    text: `Copy Token ${slot}`,
    onclick: () => copyToken(slot, prefix, input).catch(failed),
  });
  const parts = [
    el('h3', { id: label, text: `Token ${slot}` }),
    el('p', { className: 'hint', text: slot === 1 ? 'Current: what deployments use.' : 'Next: takes Token 1\'s place at the next rotation.' }),
    el('div', { className: 'token-row' }, input, reveal, copy),
    el('p', { className: 'hint' }, 'Token id ', el('code', { text: tokenId || '?' })),
  ];
  if (prefix === 'token') {
    const usage = usageOf(slot);
    if (usage) {
      parts.push(el('p', { className: 'last-used', text: `Last used: ${when(usage.last_used_at)}` }));
      parts.push(el('p', { className: 'client-count', text: `Clients in the last ${Math.round((state.usage.window_seconds || 0) / 60)} min: ${usage.client_count}` }));
      parts.push(el('ul', { className: 'clients', 'aria-label': `Clients of Token ${slot}` }, clientItems(usage.clients || [])));
    } else if (state.usage === false) {
      parts.push(el('p', { className: 'last-used hint', text: 'Last used: usage not available' }));
    }
  }
  container.replaceChildren(...parts);
}

function renderStreaming() {
  const env = state.current;
  $('streaming-environment').textContent = env.id;
  for (const slot of [1, 2]) {
    const usage = usageOf(slot);
    const revealed = state.revealed && (slot === 1 ? state.revealed.token_1 : state.revealed.token_2);
    renderToken($(`token-${slot}`), slot, {
      tokenId: (revealed && revealed.token_id) || (slot === 1 ? env.token_1_id : env.token_2_id),
      fingerprint: (revealed && revealed.fingerprint) || (usage && usage.fingerprint),
      value: revealed && revealed.token,
      shown: state.shown.has(slot),
      prefix: 'token',
    });
  }
  const grace = state.usage && Array.isArray(state.usage.grace_tokens) ? state.usage.grace_tokens : [];
  $('grace-tokens').replaceChildren(
    ...(grace.length
      ? [
          el('h3', { text: 'Old tokens in their grace period' }),
          el('ul', {}, grace.map((g) => el('li', {}, el('code', { text: g.token_id }), ` · last used ${when(g.last_used_at)} · ${g.client_count ?? 0} clients`))),
        ]
      : []),
  );
}

async function loadUsage() {
  const env = state.current;
  try {
    state.usage = await api('GET', `/v1/environments/${encodeURIComponent(env.id)}/streaming-tokens/usage`, { what: 'token usage' });
    $('usage-status').textContent = `Usage of the last ${Math.round((state.usage.window_seconds || 0) / 60)} min, updated ${when(new Date().toISOString())}.`;
  } catch (error) {
    if (error instanceof ApiFailure && (error.status === 404 || error.status === 405)) {
      state.usage = false;
      $('usage-status').textContent = 'Usage not available on this issuer (last used and clients per token).';
    } else {
      throw error;
    }
  }
}

async function revealTokens() {
  const env = state.current;
  // Audited by the issuer: every display is in the audit log.
  state.revealed = await api('GET', `/v1/environments/${encodeURIComponent(env.id)}/streaming-tokens`, { what: 'reveal the tokens' });
}

async function toggleReveal(slot, prefix) {
  if (prefix === 'rotated') {
    state.rotatedShown = state.rotatedShown || new Set();
    if (state.rotatedShown.has(slot)) state.rotatedShown.delete(slot);
    else state.rotatedShown.add(slot);
    renderRotated();
    $(`rotated-${slot}`).querySelector('button.reveal').focus();
    return;
  }
  if (state.shown.has(slot)) {
    state.shown.delete(slot);
  } else {
    if (!state.session.may_reveal) {
      $('copy-status').textContent = 'Your PAT may not reveal tokens (the reveal permission).';
      return;
    }
    if (!state.revealed) await revealTokens();
    state.shown.add(slot);
  }
  renderStreaming();
  $(`token-${slot}`).querySelector('button.reveal').focus();
}

async function copyToken(slot, prefix, input) {
  let value;
  if (prefix === 'rotated') {
    const token = slot === 1 ? state.rotated.token_1 : state.rotated.token_2;
    value = token && token.token;
  } else {
    if (!state.revealed) await revealTokens();
    value = tokenValue(slot);
  }
  const status = $('copy-status');
  const where = prefix === 'rotated' ? $('progress-note') : status;
  if (!value) {
    where.textContent = `Token ${slot} is not available.`;
    return;
  }
  try {
    await navigator.clipboard.writeText(value);
    where.textContent = `Token ${slot} copied to the clipboard.`;
  } catch {
    // No clipboard permission: show the value selected, for the person to copy.
    input.value = value;
    input.select();
    where.textContent = `The browser refused the clipboard: Token ${slot} is shown selected; copy it with Ctrl+C.`;
  }
}

async function openStreaming(opener) {
  if (!state.current) return;
  state.revealed = null;
  state.shown = new Set();
  state.usage = null;
  await refreshEnvironment();
  renderStreaming();
  openDialog($('streaming-dialog'), opener);
  $('streaming-dialog').querySelector('.close').focus();
  await loadUsage();
  renderStreaming();
  startUsagePoll();
}

function startUsagePoll() {
  stopUsagePoll();
  if (state.usage === false) return;
  let rounds = 0;
  state.usagePoll = setInterval(() => {
    rounds += 1;
    if (!$('streaming-dialog').open || rounds > 600) {
      stopUsagePoll();
      return;
    }
    loadUsage()
      .then(() => {
        if (!$('rotate-dialog').open) renderStreamingKeepingFocus();
      })
      .catch((error) => {
        stopUsagePoll();
        failed(error);
      });
  }, 3000);
}

function renderStreamingKeepingFocus() {
  const focused = document.activeElement;
  const key = focused && focused.closest('.token') && focused.className;
  const slot = focused && focused.closest('.token') && focused.closest('.token').id;
  renderStreaming();
  if (key && slot) {
    const again = $(slot).querySelector(`button.${key.split(' ')[0]}`);
    if (again) again.focus();
  }
}

function stopUsagePoll() {
  if (state.usagePoll) clearInterval(state.usagePoll);
  state.usagePoll = null;
}

$('streaming-dialog').addEventListener('close', () => {
  stopUsagePoll();
  state.revealed = null; // plaintext leaves memory with the dialog
  state.shown = new Set();
});

$('open-streaming-tokens').addEventListener('click', (event) => {
  openStreaming(event.currentTarget).catch(failed);
});

// -- Rotating streaming tokens ------------------------------------------------------------------------------

function fingerprintOf(slot) {
  const usage = usageOf(slot);
  const revealed = state.revealed && (slot === 1 ? state.revealed.token_1 : state.revealed.token_2);
  const fp = (revealed && revealed.fingerprint) || (usage && usage.fingerprint);
  return fp ? ` (fingerprint ${fp.slice(0, 12)})` : '';
}

function renderRotatePlan() {
  const env = state.current;
  $('rotate-environment').textContent = env.id;
  $('rotate-confirm-expected').textContent = env.id;
  const grace = Number($('grace-seconds').value || 0);
  $('rotate-steps').replaceChildren(
    el('li', {}, el('strong', { text: 'Token 1' }), ` ${env.token_1_id}${fingerprintOf(1)} is deactivated${grace > 0 ? ` after a grace period of ${grace} s` : ' at once'}.`),
    el('li', {}, el('strong', { text: 'Token 2' }), ` ${env.token_2_id}${fingerprintOf(2)} takes its place as Token 1.`),
    el('li', {}, 'A new ', el('strong', { text: 'Token 2' }), ' is generated.'),
  );
  const users = $('rotate-token1-users');
  const usage = usageOf(1);
  if (state.usage === false) {
    $('rotate-usage-status').textContent = 'Usage not available on this issuer: the page cannot tell who still uses Token 1.';
    users.replaceChildren();
  } else if (usage) {
    const deployments = (state.usage.deployments || []).filter((d) => d.slot === 1);
    $('rotate-usage-status').textContent = usage.client_count
      ? `${usage.client_count} client(s) used Token 1 in the last ${Math.round((state.usage.window_seconds || 0) / 60)} min; last used ${when(usage.last_used_at)}. They stop working when Token 1 is deactivated.`
      : `No client used Token 1 in the last ${Math.round((state.usage.window_seconds || 0) / 60)} min (last used ${when(usage.last_used_at)}).`;
    users.replaceChildren(
      ...clientItems(usage.clients || []),
      ...deployments.map((d) => el('li', { className: 'client' }, 'deployment ', el('code', { className: 'client-deployment', text: d.deployment_id }), ` runs with Token 1 · last seen ${when(d.last_seen_at)}`)),
    );
  } else {
    $('rotate-usage-status').textContent = 'Loading who uses Token 1…';
  }
  const allowed = state.session.may_rotate && (state.session.environments === null || state.session.environments.includes(env.id));
  const reason = $('rotate-disabled-reason');
  if (!allowed) {
    reason.textContent = state.session.may_rotate
      ? 'Your PAT is not valid for this environment.'
      : `Only users with Admin role can rotate. You are logged in as ${state.session.subject} with the ${state.session.role} role.`;
    reason.hidden = false;
  } else {
    reason.hidden = true;
  }
  for (const id of ['grace-seconds', 'if-unused-seconds', 'rotate-confirm']) $(id).disabled = !allowed;
  if (!allowed) {
    for (const id of ['grace-seconds', 'if-unused-seconds', 'rotate-confirm']) $(id).setAttribute('aria-describedby', 'rotate-disabled-reason');
  }
  $('rotate-submit').disabled = !allowed || $('rotate-confirm').value.trim() !== env.id;
  if (!allowed) $('rotate-submit').setAttribute('aria-describedby', 'rotate-disabled-reason');
}

function openRotate(opener) {
  state.rotationKey = crypto.randomUUID();
  state.rotated = null;
  state.rotatedShown = new Set();
  $('rotate-plan').hidden = false;
  $('rotate-result').hidden = true;
  $('rotate-error').hidden = true;
  $('rotate-force').hidden = true;
  $('rotate-conflict-clients').replaceChildren();
  $('rotate-confirm').value = '';
  $('grace-seconds').value = '0';
  $('if-unused-seconds').value = '';
  renderRotatePlan();
  openDialog($('rotate-dialog'), opener);
  (state.session.may_rotate ? $('grace-seconds') : $('rotate-dialog').querySelector('.close')).focus();
}

$('rotate-them').addEventListener('click', (event) => openRotate(event.currentTarget));
for (const id of ['rotate-confirm', 'grace-seconds']) $(id).addEventListener('input', () => renderRotatePlan());

function rotateError(message) {
  const out = $('rotate-error');
  out.textContent = message;
  out.hidden = false;
}

async function rotate(force) {
  const env = state.current;
  $('rotate-error').hidden = true;
  const grace = Number($('grace-seconds').value || 0);
  if (!Number.isInteger(grace) || grace < 0) {
    rotateError('The grace period is a whole number of seconds, 0 or more.');
    $('grace-seconds').focus();
    return;
  }
  const body = { grace_period_seconds: grace, expected_generation: env.generation };
  const unused = $('if-unused-seconds').value.trim();
  if (unused) {
    const seconds = Number(unused);
    if (!Number.isInteger(seconds) || seconds < 1) {
      rotateError('"Only rotate if unused for" is a whole number of seconds, 1 or more, or empty.');
      $('if-unused-seconds').focus();
      return;
    }
    body.if_unused_seconds = seconds;
  }
  if (force) body.force = true;
  $('rotate-submit').disabled = true;
  $('rotate-force').disabled = true;
  try {
    state.rotated = await api('POST', `/v1/environments/${encodeURIComponent(env.id)}/streaming-tokens/rotate`, {
      body,
      headers: { 'Idempotency-Key': `${state.rotationKey}${force ? '-force' : ''}` },
      what: 'rotate',
    });
  } catch (error) {
    if (error instanceof ApiFailure && error.code === 'token_1_in_use') {
      const clients = (error.body && (error.body.clients || (error.body.error && error.body.error.clients))) || [];
      rotateError(`${error.body.message || 'Token 1 is still in use.'} Nothing was rotated.`);
      $('rotate-conflict-clients').replaceChildren(...clientItems(clients));
      $('rotate-force').hidden = false;
      $('rotate-force').disabled = false;
      $('rotate-force').focus();
      return;
    }
    if (error instanceof ApiFailure && error.status === 412) {
      rotateError('The tokens were rotated meanwhile (by someone else); the dialog shows the new state. Nothing was rotated now.');
      await refreshEnvironment();
      renderRotatePlan();
      return;
    }
    if (error instanceof ApiFailure && error.status >= 400 && error.status < 500 && error.status !== 401) {
      rotateError(error.message);
      renderRotatePlan();
      return;
    }
    renderRotatePlan();
    throw error;
  }
  state.current = { ...env, generation: state.rotated.generation, token_1_id: state.rotated.token_1.token_id, token_2_id: state.rotated.token_2.token_id };
  $('rotate-plan').hidden = true;
  $('rotate-result').hidden = false;
  renderRotated();
  $('rotate-result-title').setAttribute('tabindex', '-1');
  $('rotate-result-title').focus();
  startProgress(state.rotated.generation);
}

$('rotate-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if ($('rotate-submit').disabled) return;
  rotate(false).catch(failed);
});
$('rotate-force').addEventListener('click', () => rotate(true).catch(failed));

function renderRotated() {
  const view = state.rotated;
  const grace = (view.grace_tokens || []).filter((g) => g.valid_until);
  $('rotate-grace-note').textContent = grace.length
    ? `The old Token 1 (${grace.map((g) => g.token_id).join(', ')}) stays valid until ${grace.map((g) => when(g.valid_until).split(' (')[0]).join(', ')}.`
    : 'The old Token 1 is deactivated: clients still using it are refused from now on.';
  for (const slot of [1, 2]) {
    const token = slot === 1 ? view.token_1 : view.token_2;
    renderToken($(`rotated-${slot}`), slot, {
      tokenId: token.token_id,
      fingerprint: token.fingerprint,
      value: token.token,
      shown: state.rotatedShown.has(slot),
      prefix: 'rotated',
    });
  }
}

const STEP_NAMES = {
  broker: 'Broker applied (its users and ACLs match the new tokens)',
  resolvers: 'Resolvers applied (every replica serves the new tokens)',
  notified: 'Deployments notified',
  acknowledged: 'Deployments acknowledged',
};

function renderProgress(progress) {
  const items = [];
  const mark = (done) => (done ? '✓' : '…');
  const broker = progress.broker || {};
  items.push(el('li', { dataset: { step: 'broker', done: String(Boolean(broker.applied)) } }, `${mark(broker.applied)} ${STEP_NAMES.broker}`));
  const resolvers = progress.resolvers || {};
  const none = resolvers.total === 0;
  const resolved = none || (resolvers.total > 0 && resolvers.applied >= resolvers.total);
  const counted = none ? 'no resolver configured to ask' : `${resolvers.applied ?? '?'} of ${resolvers.total ?? '?'}`;
  items.push(el('li', { dataset: { step: 'resolvers', done: String(resolved) } }, `${mark(resolved)} ${STEP_NAMES.resolvers}: ${counted}`));
  const d = progress.deployments;
  if (d) {
    const notified = d.subscribed > 0 && d.notified >= d.subscribed;
    const acked = d.subscribed > 0 && d.acknowledged >= d.subscribed;
    items.push(el('li', { dataset: { step: 'notified', done: String(notified) } }, `${mark(notified)} ${STEP_NAMES.notified}: ${d.notified} of ${d.subscribed} subscribed`));
    items.push(el('li', { dataset: { step: 'acknowledged', done: String(acked) } }, `${mark(acked)} ${STEP_NAMES.acknowledged}: ${d.acknowledged} of ${d.subscribed}${d.dead ? ` (${d.dead} failed for good)` : ''}`));
  } else {
    const why = typeof progress.deployments_reason === 'string' ? progress.deployments_reason : 'no notifier reports';
    items.push(el('li', { dataset: { step: 'notified', done: 'false' } }, `Deployments: not available (${why})`));
  }
  $('progress-steps').replaceChildren(...items);
  $('progress-state').textContent = progress.state || 'unknown';
}

function fromPropagation(p) {
  // Before the progress view exists on this issuer: the propagation view (broker, resolvers) only.
  const detail = p.resolver_detail || [];
  const applied = detail.filter((r) => r.applied).length;
  const broker = p.broker === 'applied' || p.broker === 'off';
  const resolvers = p.resolvers === 'applied' || p.resolvers === 'unknown';
  return {
    broker: { applied: broker },
    resolvers: { applied, total: detail.length },
    deployments: null,
    state: broker && resolvers ? 'resolvers_applied' : broker ? 'broker_applied' : 'publishing',
  };
}

function startProgress(generation) {
  stopProgress();
  const env = state.current;
  const base = `/v1/environments/${encodeURIComponent(env.id)}/streaming-tokens`;
  let useProgress = true;
  let rounds = 0;
  $('progress-note').textContent = 'Watching the rotation…';
  const tick = async () => {
    rounds += 1;
    let progress;
    if (useProgress) {
      try {
        progress = await api('GET', `${base}/progress`, { what: 'rotation progress' });
      } catch (error) {
        if (!(error instanceof ApiFailure && error.status === 404)) throw error; // not on this issuer yet
        useProgress = false;
      }
    }
    if (!useProgress) progress = fromPropagation(await api('GET', `${base}/propagation`, { what: 'propagation' }));
    if (progress.generation !== undefined && progress.generation > generation) {
      $('progress-note').textContent = `A newer rotation (generation ${progress.generation}) happened since; showing it.`;
    }
    renderProgress(progress);
    const d = progress.deployments;
    if (progress.state === 'acknowledged') {
      $('progress-note').textContent = 'Done: every subscribed deployment acknowledged the rotation.';
      return true;
    }
    if (!useProgress && progress.state === 'resolvers_applied') {
      $('progress-note').textContent = 'Broker and resolvers applied (deployment progress is not available on this issuer).';
      return true;
    }
    if (d && d.subscribed === 0 && progress.state !== 'publishing' && progress.state !== 'broker_applied') {
      $('progress-note').textContent = 'No deployment is subscribed to this environment\'s rotations.';
    }
    return rounds > 600;
  };
  const loop = async () => {
    state.progressPoll = null;
    if (!$('rotate-dialog').open) return;
    let done;
    try {
      done = await tick();
    } catch (error) {
      failed(error);
      return;
    }
    if (!done) state.progressPoll = setTimeout(loop, 1000);
  };
  loop();
}

function stopProgress() {
  if (state.progressPoll) clearTimeout(state.progressPoll);
  state.progressPoll = null;
}

$('rotate-dialog').addEventListener('close', () => {
  stopProgress();
  const rotated = state.rotated;
  state.rotated = null;
  if (rotated && $('streaming-dialog').open) {
    state.revealed = null;
    state.shown = new Set();
    loadUsage().then(renderStreaming).catch(failed);
    renderStreaming();
  }
});

// -- Personal Access Tokens ---------------------------------------------------------------------------------

function patRow(pat) {
  const expired = new Date(pat.expires_at).getTime() <= Date.now();
  const status = pat.revoked_at ? `revoked ${when(pat.revoked_at)}` : expired ? 'expired' : 'active';
  const mine = state.session && pat.id === state.session.pat_id;
  const revoke = el('button', {
    type: 'button',
    className: 'danger revoke-pat',
    disabled: Boolean(pat.revoked_at),
    'aria-label': `Revoke the PAT of ${pat.subject}`,
    text: 'Revoke',
    onclick: (event) => confirmRevoke(pat, event.currentTarget),
  });
  return el(
    'tr',
    { dataset: { patId: pat.id } },
    el('td', {}, el('span', { className: 'pat-subject', text: pat.subject }), mine ? el('span', { className: 'hint', text: ' (this session)' }) : null),
    el('td', { text: pat.role }),
    el('td', { text: `${pat.environments ? pat.environments.join(', ') : 'every environment'}${pat.actions ? ` · ${pat.actions.join(', ')}` : ''}` }),
    el('td', { text: when(pat.expires_at).split(' (')[0] }),
    el('td', { className: 'pat-state', text: status }),
    el('td', {}, revoke),
  );
}

async function loadPats(more = false) {
  if (!more) {
    state.patsAfter = null;
    $('pats-rows').replaceChildren();
  }
  const query = state.patsAfter ? `?after=${encodeURIComponent(state.patsAfter)}` : '';
  const data = await api('GET', `/v1/pats${query}`, { what: 'list PATs' });
  $('pats-rows').append(...data.pats.map(patRow));
  state.patsAfter = data.next;
  $('pats-more').hidden = !data.next;
  $('pats-status').textContent = `${$('pats-rows').children.length} personal access token(s).`;
}

$('open-pats').addEventListener('click', (event) => {
  openDialog($('pats-dialog'), event.currentTarget);
  loadPats().catch(failed);
});
$('pats-more').addEventListener('click', () => loadPats(true).catch(failed));

let pendingRevoke = null;
function confirmRevoke(pat, opener) {
  pendingRevoke = pat;
  const text = $('confirm-text');
  text.replaceChildren(
    'Revoke the PAT of ',
    el('strong', { text: pat.subject }),
    ` (${pat.role}, id ${pat.id.slice(0, 8)}…)? Whoever uses it is refused from now on, and its page sessions end.`,
  );
  openDialog($('confirm-dialog'), opener);
  $('confirm-dialog').querySelector('[data-close]').focus();
}

$('confirm-yes').addEventListener('click', async () => {
  const pat = pendingRevoke;
  $('confirm-dialog').close();
  if (!pat) return;
  try {
    await api('DELETE', `/v1/pats/${encodeURIComponent(pat.id)}`, { what: 'revoke PAT' });
    $('pats-status').textContent = `Revoked the PAT of ${pat.subject}.`;
    if (state.session && pat.id === state.session.pat_id) {
      toLogin();
      return;
    }
    await loadPats();
  } catch (error) {
    if (error instanceof ApiFailure && error.status >= 400 && error.status < 500) {
      $('pats-status').textContent = error.message;
    } else {
      failed(error);
    }
  }
});

// -- start ----------------------------------------------------------------------------------------------------

async function start() {
  await loadSession();
  await loadEnvironments();
  document.body.dataset.ready = 'true';
}

start().catch((error) => {
  if (error instanceof ApiFailure && error.status === 401) return;
  showBanner(error.message || String(error));
  failed(error);
});
