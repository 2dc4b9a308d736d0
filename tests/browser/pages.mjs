// Tessera's browser pages in a real headless Chromium, JavaScript-free pages driven as a
// person would: sign up, see the device list, sign in from a second browser and be sent on
// to `return_to` on another origin, sign that browser out from the first, and check what the
// browser's own cookie jar holds.
//
//   node pages.mjs BASE_URL APP_ORIGIN
//
// BASE_URL is a running Tessera; APP_ORIGIN an application origin in its `allowed_origins`
// that answers `GET /landed`. Environment: CHROMIUM (the browser binary, default
// /usr/bin/chromium), COOKIE_NAME and COOKIE_SECURE (what the server was configured with),
// SCREENSHOTS (a directory: phone and desktop screenshots of the pages are written there).
// Exits non-zero, saying what failed, on the first broken expectation.

import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [base, appOrigin] = process.argv.slice(2);
if (!base || !appOrigin) {
  console.error('usage: node pages.mjs BASE_URL APP_ORIGIN');
  process.exit(2);
}
const cookieName = process.env.COOKIE_NAME ?? '__Host-tessera_session';
const cookieSecure = (process.env.COOKIE_SECURE ?? 'true') === 'true';
const screenshots = process.env.SCREENSHOTS;
if (screenshots) mkdirSync(screenshots, { recursive: true });

const email = `browser-${Date.now()}@example.com`;
const password = 'violet tractor over the moon';
const desktop = { viewport: { width: 1280, height: 800 } };
const phone = { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true };

const step = (text) => console.log(`ok - ${text}`);

async function shoot(page, name) {
  if (!screenshots) return;
  await page.screenshot({ path: join(screenshots, `${name}.png`), fullPage: true });
}

/// Fills the labelled fields and submits, waiting for the answer's page.
async function submit(page, fields, button) {
  for (const [label, value] of Object.entries(fields)) {
    await page.getByLabel(label, { exact: true }).fill(value);
  }
  await Promise.all([
    page.waitForNavigation(),
    page.getByRole('button', { name: button }).click(),
  ]);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // Containers and CI run as root, where Chromium's sandbox cannot start.
  args: ['--no-sandbox'],
});
try {
  // Browser A, desktop: sign up; the account is signed in and sent on to its devices.
  const a = await browser.newContext({ ...desktop, userAgent: 'Tessera test browser A' });
  const pa = await a.newPage();
  await pa.goto(`${base}/ui/signup`);
  await shoot(pa, 'signup-desktop');
  await submit(pa, { 'Email address': email, Password: password }, 'Create my account');
  assert.equal(pa.url(), `${base}/ui/devices`);
  assert.match(await pa.locator('main').innerText(), new RegExp(email.replace(/[.]/g, '\\.')));
  assert.equal(await pa.locator('.device.current').count(), 1);
  step('signed up and in; the device list shows this device');

  // The session cookie as the browser keeps it.
  const jar = await a.cookies(base);
  const session = jar.find((c) => c.name === cookieName);
  assert.ok(session, `no ${cookieName} in ${JSON.stringify(jar.map((c) => c.name))}`);
  assert.equal(session.httpOnly, true, 'HttpOnly');
  assert.equal(session.secure, cookieSecure, 'Secure');
  assert.equal(session.sameSite, 'Lax', 'SameSite');
  assert.equal(session.path, '/', 'Path');
  assert.equal(session.domain, new URL(base).hostname, 'host-only');
  if (cookieSecure) assert.ok(session.name.startsWith('__Host-'), 'the __Host- prefix');
  assert.ok(session.expires > Date.now() / 1000, 'a persistent cookie');
  const device = jar.find((c) => c.name.endsWith('tessera_device'));
  assert.ok(device, 'the device cookie');
  assert.equal(device.httpOnly, true);
  assert.equal(device.sameSite, 'Strict');
  assert.equal(await pa.evaluate(() => document.cookie), '', 'no cookie readable by scripts');
  step(`the session cookie ${session.name}: HttpOnly, Secure=${session.secure}, SameSite=Lax, Path=/, host-only`);

  // Browser B, a phone: sign-in with return_to on the application's origin. Chromium applies
  // the page's CSP form-action to the redirect after the post, so landing there proves the
  // policy names it.
  const b = await browser.newContext({ ...phone, userAgent: 'Tessera test browser B' });
  const pb = await b.newPage();
  const landing = `${appOrigin}/landed`;
  await pb.goto(`${base}/ui/login?return_to=${encodeURIComponent(landing)}`);
  await shoot(pb, 'login-phone');
  await submit(pb, { 'Email address': email, Password: 'not the password' }, 'Sign in');
  assert.equal(await pb.locator('#password').getAttribute('aria-describedby'), 'password-error');
  assert.match(await pb.locator('#password-error').innerText(), /Wrong email address or password/);
  await shoot(pb, 'login-error-phone');
  step('a wrong password is said beside the password field');
  await submit(pb, { Password: password }, 'Sign in');
  assert.equal(pb.url(), landing);
  assert.match(await pb.locator('body').innerText(), /Application/);
  step(`sent back to return_to ${landing} after sign-in`);
  await pb.goto(`${base}/ui/devices`);
  assert.equal(await pb.locator('.device').count(), 2);
  await shoot(pb, 'devices-phone');

  // A's list now has B; A signs B out.
  await pa.reload();
  assert.equal(await pa.locator('.device').count(), 2);
  await shoot(pa, 'devices-desktop');
  const other = pa.locator('.device', { hasText: 'Tessera test browser B' });
  await Promise.all([
    pa.waitForNavigation(),
    other.getByRole('button', { name: 'Sign this device out' }).click(),
  ]);
  assert.equal(pa.url(), `${base}/ui/devices`);
  assert.equal(await pa.locator('.device').count(), 1);
  step('browser A signed browser B out from its device list');

  // B is refused now: its pages send it to sign in, the API says 401.
  await pb.goto(`${base}/ui/devices`);
  assert.equal(pb.url(), `${base}/ui/login`);
  const who = await b.request.get(`${base}/v1/session`);
  assert.equal(who.status(), 401);
  step('browser B is refused: sent to sign in, /v1/session answers 401');

  // Sign-in page screenshots at desktop width.
  const c = await browser.newContext(desktop);
  const pc = await c.newPage();
  await pc.goto(`${base}/ui/login`);
  await shoot(pc, 'login-desktop');

  // A signs out everywhere, by the button on its device list.
  await Promise.all([
    pa.waitForNavigation(),
    pa.getByRole('button', { name: 'Sign out everywhere' }).click(),
  ]);
  assert.equal(pa.url(), `${base}/ui/login`);
  assert.equal((await a.cookies(base)).some((c) => c.name === cookieName), false);
  await pa.goto(`${base}/ui/devices`);
  assert.equal(pa.url(), `${base}/ui/login`);
  step('signed out everywhere: the cookie is gone and the devices page asks to sign in');
} finally {
  await browser.close();
}
