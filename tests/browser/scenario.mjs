// One browser scenario against the issuer's page, as a person would use it: Playwright (playwright-core)
// driving Debian's chromium, headless. Run by tests/browser/test_page.py:
//   node scenario.mjs NAME   (config: JSON in STREAMTOKEN_BROWSER_CONFIG)
// The last line of stdout is `RESULT {json}`; every wait is bounded; exit code 0 only when the scenario
// got to its end. Every dialog (alert/confirm) the page opens is recorded: a hostile name must open none.
import { chromium } from 'playwright-core';
import path from 'node:path';

const config = JSON.parse(process.env.STREAMTOKEN_BROWSER_CONFIG || '{}');
const name = process.argv[2];
const WAIT = config.wait_ms || 30000;
const result = { scenario: name, steps: [], dialogs: [], console_errors: [], page_errors: [], screenshots: [] };

function step(what, extra = {}) {
  result.steps.push({ what, ...extra });
  process.stderr.write(`[${name}] ${what}\n`);
}

async function shot(page, file) {
  const target = path.join(config.screenshots, file);
  await page.screenshot({ path: target, fullPage: false });
  result.screenshots.push(target);
}

async function newPage(browser) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, baseURL: config.url });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('dialog', async (dialog) => {
    result.dialogs.push({ type: dialog.type(), message: dialog.message() });
    await dialog.dismiss();
  });
  page.on('console', (message) => {
    if (message.type() === 'error') result.console_errors.push(message.text());
  });
  page.on('pageerror', (error) => result.page_errors.push(String(error)));
  return { context, page };
}

async function login(page, pat) {
  await page.goto('/ui/');
  await page.waitForURL('**/ui/login**');
  await page.getByLabel('Personal access token').fill(pat);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.waitForURL((url) => url.pathname === '/ui/');
  await page.locator('body[data-ready="true"]').waitFor();
}

async function openStreamingTokens(page, environmentId) {
  await page.getByRole('button', { name: new RegExp(environmentId) }).click();
  await page.getByRole('button', { name: 'Streaming Tokens' }).click();
  const dialog = page.getByRole('dialog', { name: 'Streaming Tokens' });
  await dialog.waitFor();
  return dialog;
}

const scenarios = {
  // Log in, open the dialog, see the running app on Token 1, reveal + copy, rotate with the typed
  // confirmation, watch the progress reach "acknowledged".
  async rotation(browser) {
    const { context, page } = await newPage(browser);
    await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: config.url });
    await page.goto('/ui/');
    await page.waitForURL('**/ui/login**');
    await shot(page, 'login.png');
    await login(page, config.admin_pat);
    step('logged in');
    const dialog = await openStreamingTokens(page, config.environment_id);
    step('streaming tokens dialog open');
    const token1 = dialog.locator('#token-1');
    // The running quixstreams app shows on Token 1 (its deployment id, reported by the agent / resolver).
    await token1.locator('.clients li').filter({ hasText: config.expect_client }).first().waitFor({ timeout: config.usage_wait_ms || 90000 });
    result.token_1_clients = await token1.locator('.clients li').allTextContents();
    result.token_1_last_used = await token1.locator('.last-used').textContent();
    step('app listed on Token 1');
    await shot(page, 'streaming-tokens.png'); // masked: the README's screenshot
    const masked = await page.locator('#token-1-value').inputValue();
    result.masked_before_reveal = masked;
    await token1.getByRole('button', { name: 'Reveal Token 1' }).click();
    await page.waitForFunction(() => document.querySelector('#token-1-value').value.startsWith('stk_') && !document.querySelector('#token-1-value').value.includes('•'));
    result.revealed_token_1 = await page.locator('#token-1-value').inputValue();
    await token1.getByRole('button', { name: 'Copy Token 1' }).click();
    await page.locator('#copy-status').filter({ hasText: 'Token 1' }).waitFor();
    result.copy_status = await page.locator('#copy-status').textContent();
    try {
      result.clipboard = await page.evaluate(() => navigator.clipboard.readText());
    } catch (error) {
      result.clipboard_error = String(error);
    }
    await shot(page, 'streaming-tokens-revealed.png');
    // Keyboard: the "rotate them" link is a real button; Enter opens the dialog.
    await dialog.getByRole('button', { name: 'rotate them' }).focus();
    await page.keyboard.press('Enter');
    const rotate = page.getByRole('dialog', { name: 'Rotating streaming tokens' });
    await rotate.waitFor();
    result.rotate_steps = await rotate.locator('#rotate-steps li').allTextContents();
    await rotate.locator('#rotate-token1-users li').filter({ hasText: config.expect_client }).first().waitFor();
    result.rotate_users = await rotate.locator('#rotate-token1-users li').allTextContents();
    result.rotate_usage_status = await rotate.locator('#rotate-usage-status').textContent();
    const submit = rotate.getByRole('button', { name: 'Rotate tokens' });
    result.submit_disabled_before_confirm = await submit.isDisabled();
    await rotate.getByLabel(/Grace period/).fill(String(config.grace_seconds ?? 0));
    await rotate.getByLabel(/to confirm/).fill(config.environment_id.slice(0, -1));
    result.submit_disabled_wrong_confirm = await submit.isDisabled();
    await rotate.getByLabel(/to confirm/).fill(config.environment_id);
    await shot(page, 'rotating-streaming-tokens.png');
    await submit.click();
    await rotate.locator('#rotate-result').waitFor();
    step('rotated');
    try {
      await rotate.locator('#progress-state').filter({ hasText: /^acknowledged$/ }).waitFor({ timeout: config.progress_wait_ms || 120000 });
    } catch (error) {
      result.progress = await rotate.locator('#progress-steps li').allTextContents();
      result.progress_state = await rotate.locator('#progress-state').textContent();
      result.progress_note = await rotate.locator('#progress-note').textContent();
      await shot(page, 'rotation-progress-timeout.png');
      throw new Error(`${error.message}\nprogress: ${result.progress_state} ${JSON.stringify(result.progress)} ${result.progress_note}`);
    }
    result.progress = await rotate.locator('#progress-steps li').allTextContents();
    result.progress_note = await rotate.locator('#progress-note').textContent();
    step('progress acknowledged');
    await rotate.getByRole('button', { name: 'Reveal Token 1' }).click();
    result.new_token_1 = await page.locator('#rotated-1-value').inputValue();
    await rotate.getByRole('button', { name: 'Reveal Token 2' }).click();
    result.new_token_2 = await page.locator('#rotated-2-value').inputValue();
    await rotate.getByRole('button', { name: 'Hide Token 1' }).click();
    await rotate.getByRole('button', { name: 'Hide Token 2' }).click();
    await shot(page, 'rotation-progress.png');
    // Esc closes the top dialog; focus returns to the Streaming Tokens dialog.
    await page.keyboard.press('Escape');
    await rotate.waitFor({ state: 'hidden' });
    result.streaming_still_open = await dialog.isVisible();
    result.focus_after_escape = await page.evaluate(() => document.activeElement && document.activeElement.textContent);
    await context.close();
  },

  // Hostile strings (a PAT subject, a client's user agent) show as text; no alert/confirm fires.
  async hostile(browser) {
    const { context, page } = await newPage(browser);
    await login(page, config.admin_pat);
    await page.getByRole('button', { name: new RegExp(config.environment_id) }).click();
    await page.getByRole('button', { name: 'Personal Access Tokens' }).click();
    const pats = page.getByRole('dialog', { name: 'Personal Access Tokens' });
    await pats.locator('.pat-subject').filter({ hasText: config.hostile }).first().waitFor();
    result.subjects = await pats.locator('.pat-subject').allTextContents();
    result.injected_images = await page.locator('#pats-rows img').count();
    result.window_flag = await page.evaluate(() => window.__pwned === true);
    await shot(page, 'hostile-pat-subject.png');
    // Revoke it through the page (keyboard: Revoke, then the confirmation dialog's Revoke).
    const row = pats.locator('tr').filter({ hasText: config.hostile }).first();
    await row.getByRole('button', { name: /Revoke/ }).click();
    const confirm = page.getByRole('dialog', { name: 'Revoke personal access token' });
    await confirm.waitFor();
    result.confirm_text = await confirm.locator('#confirm-text').textContent();
    await confirm.getByRole('button', { name: 'Revoke' }).click();
    await row.locator('.pat-state').filter({ hasText: 'revoked' }).waitFor();
    result.revoked_state = await row.locator('.pat-state').textContent();
    await pats.getByRole('button', { name: 'Close', exact: true }).click();
    if (config.hostile_agent) {
      const dialog = await openStreamingTokens(page, config.environment_id);
      await dialog.locator('.client-agent').filter({ hasText: config.hostile_agent }).first().waitFor({ timeout: config.usage_wait_ms || 60000 });
      result.agents = await dialog.locator('.client-agent').allTextContents();
      result.injected_in_dialog = await dialog.locator('img').count();
      await shot(page, 'hostile-user-agent.png');
    }
    await page.waitForTimeout(300); // an onerror handler would have fired by now
    result.window_flag_end = await page.evaluate(() => window.__pwned === true);
    await context.close();
  },

  // A member sees the rotation disabled, with the reason; PATs are not theirs to list.
  async member(browser) {
    const { context, page } = await newPage(browser);
    await login(page, config.member_pat);
    await page.getByRole('button', { name: new RegExp(config.environment_id) }).click();
    result.pats_disabled = await page.getByRole('button', { name: 'Personal Access Tokens' }).isDisabled();
    result.pats_reason = await page.locator('#pats-reason').textContent();
    const dialog = await openStreamingTokens(page, config.environment_id);
    await dialog.getByRole('button', { name: 'rotate them' }).click();
    const rotate = page.getByRole('dialog', { name: 'Rotating streaming tokens' });
    await rotate.waitFor();
    result.reason = await rotate.locator('#rotate-disabled-reason').textContent();
    result.reason_visible = await rotate.locator('#rotate-disabled-reason').isVisible();
    result.submit_disabled = await rotate.getByRole('button', { name: 'Rotate tokens' }).isDisabled();
    result.confirm_disabled = await rotate.getByLabel(/to confirm/).isDisabled();
    await shot(page, 'member-rotate-disabled.png');
    await page.keyboard.press('Escape');
    await rotate.waitFor({ state: 'hidden' });
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    await context.close();
  },

  // A session that ends (its PAT revoked elsewhere, or a forged cookie) sends the person to the login page.
  async expired(browser) {
    const { context, page } = await newPage(browser);
    await login(page, config.doomed_pat);
    step('logged in with the PAT about to be revoked');
    const revoked = await fetch(`${config.url}/v1/pats/${config.doomed_pat_id}`, {
      method: 'DELETE',
      headers: { Authorization: `Bearer ${config.admin_pat}` },
    });
    result.revoke_status = revoked.status;
    // The next action of the page (opening an environment's tokens) meets the ended session.
    await page.getByRole('button', { name: new RegExp(config.environment_id) }).click();
    await page.getByRole('button', { name: 'Streaming Tokens' }).click();
    await page.waitForURL('**/ui/login?reason=ended');
    result.notice = await page.locator('#login-reason').textContent();
    result.banner_hidden = await page.locator('#error-banner').isHidden();
    await shot(page, 'session-ended.png');
    // A reload of the page itself (a page route) is a redirect too, never a trace.
    const response = await page.goto('/ui/');
    result.reload_url = page.url();
    result.reload_status = response.status();
    // A forged cookie: the same.
    await context.addCookies([{ name: 'streamtoken_session', value: 'forged', url: config.url }]);
    await page.goto('/ui/');
    result.forged_url = page.url();
    result.forged_body = (await page.locator('body').textContent()).slice(0, 400);
    await context.close();
  },

  // A JavaScript error shows the banner and reaches the issuer's log; a CSRF-less POST is refused.
  async errors(browser) {
    const { context, page } = await newPage(browser);
    await login(page, config.admin_pat);
    await page.evaluate((marker) => {
      setTimeout(() => {
        throw new Error(marker);
      }, 0);
    }, config.error_marker);
    await page.locator('#error-banner').filter({ hasText: config.error_marker }).waitFor();
    result.banner = await page.locator('#error-banner').textContent();
    await shot(page, 'error-banner.png');
    await page.getByRole('button', { name: 'Dismiss' }).click();
    result.banner_hidden_after_dismiss = await page.locator('#error-banner').isHidden();
    // The page's own cookie, but no X-CSRF-Token: refused (403), and nothing rotated.
    result.csrf_less = await page.evaluate(async (id) => {
      const response = await fetch(`/v1/environments/${id}/streaming-tokens/rotate`, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { 'Content-Type': 'application/json' },
        body: '{}',
      });
      return { status: response.status, body: await response.json() };
    }, config.environment_id);
    // A cross-site page cannot even read the session: no CORS, and SameSite=Strict keeps the cookie home.
    result.cookie_visible_to_js = await page.evaluate(() => document.cookie.includes('streamtoken_session'));
    const cookies = await context.cookies();
    result.cookie = cookies.find((c) => c.name === 'streamtoken_session') || null;
    if (result.cookie) result.cookie = { ...result.cookie, value: '<hidden>' };
    // Logging out ends it: back at the login page, and the page redirects there on reload.
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.waitForURL('**/ui/login?reason=logout');
    await page.goto('/ui/');
    result.after_logout_url = page.url();
    await context.close();
  },
};

async function main() {
  if (!scenarios[name]) throw new Error(`unknown scenario ${name}; known: ${Object.keys(scenarios).join(', ')}`);
  const browser = await chromium.launch({
    executablePath: config.chromium,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage'],
  });
  try {
    await scenarios[name](browser);
    result.ok = true;
  } finally {
    await browser.close();
  }
}

main()
  .catch((error) => {
    result.ok = false;
    result.error = String(error && error.stack ? error.stack : error);
  })
  .finally(() => {
    process.stdout.write(`RESULT ${JSON.stringify(result)}\n`);
    process.exitCode = result.ok ? 0 : 1;
  });
