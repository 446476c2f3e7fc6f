import { installErrorReporting, reportError } from './errors.js';

installErrorReporting();

const REASONS = {
  ended: 'Your session has ended (expired, logged out or its PAT revoked). Log in again.',
  logout: 'You are logged out.',
};

const reason = new URLSearchParams(location.search).get('reason');
if (reason && Object.hasOwn(REASONS, reason)) {
  const notice = document.getElementById('login-reason');
  notice.textContent = REASONS[reason];
  notice.hidden = false;
}

const form = document.getElementById('login-form');
const input = document.getElementById('pat');
const failure = document.getElementById('login-error');
const submit = document.getElementById('login-submit');
input.focus();

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  failure.hidden = true;
  const pat = input.value.trim();
  if (!pat) {
    failure.textContent = 'Paste a personal access token.';
    failure.hidden = false;
    input.focus();
    return;
  }
  submit.disabled = true;
  try {
    const response = await fetch('/ui/session', {
      method: 'POST',
      credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ pat }),
    });
    if (response.ok) {
      input.value = '';
      location.assign('/ui/' + location.hash);
      return;
    }
    let message = `The issuer answered HTTP ${response.status}.`;
    try {
      const body = await response.json();
      if (body && typeof body.message === 'string') message = body.message;
    } catch {
      // not JSON: keep the status line
    }
    failure.textContent = message;
    failure.hidden = false;
    input.focus();
    if (response.status >= 500) reportError('api', `log in: HTTP ${response.status}`);
  } catch (error) {
    reportError('network', `Could not reach the issuer: ${error}`);
  } finally {
    submit.disabled = false;
  }
});
