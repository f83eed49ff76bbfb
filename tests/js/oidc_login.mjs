// A person logging in through Pylon's `oidc` route in a real browser: Debian's Chromium driven
// by npm's playwright-core. `node oidc_login.mjs GATEWAY ISSUER SCREENSHOT`: prints one JSON
// object of what it saw at each step, for tests/oidc_browser.rs to judge.
const root = process.env.PYLON_NODE_MODULES;
const { chromium } = await import(`${root}/playwright-core/index.mjs`);

const [gateway, issuer, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/lib/chromium/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
const seen = {};
try {
  const context = await browser.newContext();
  const page = await context.newPage();
  // What the upstream (echo) saw, from the page it answered.
  const upstream = async () => JSON.parse(await page.locator('body').innerText());
  // An API call with the browser's cookies (not a navigation).
  const api = async (path) => (await context.request.get(`${gateway}${path}`, {
    headers: { accept: 'application/json' }, maxRedirects: 0,
  })).status();

  // The protected page sends the browser to the provider's login form.
  await page.goto(`${gateway}/app/page?from=browser`);
  seen.login_at = page.url();
  await page.fill('input[name=login]', 'erin');
  await page.fill('input[name=password]', 'any');
  await page.click('button[type=submit]');
  // The consent form, then back to the page.
  await page.waitForURL((u) => u.href.startsWith(issuer) && u.href.includes('/interaction/'));
  await page.click('button[type=submit]');
  await page.waitForURL((u) => u.href.startsWith(gateway));
  seen.back_at = page.url();
  const first = await upstream();
  seen.consumer = first.headers['x-consumer'];
  seen.email = first.headers['x-email'];
  seen.first_token = first.headers.authorization;
  seen.upstream_cookie = first.headers.cookie ?? '';
  seen.cookies = (await context.cookies(gateway)).map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite }));
  await page.screenshot({ path: screenshot });

  // Past the access token's refresh time: the next page has a new token, the same session.
  await page.waitForTimeout(3500);
  await page.goto(`${gateway}/app/later`);
  const later = await upstream();
  seen.later_consumer = later.headers['x-consumer'];
  seen.later_token = later.headers.authorization;
  seen.api_with_session = await api('/app/data');

  // A changed cookie is no session.
  const good = (await context.cookies(gateway)).find((c) => c.name === 'pylon_session');
  const flipped = good.value.slice(0, 10) + (good.value[10] === 'A' ? 'B' : 'A') + good.value.slice(11);
  await context.addCookies([{ ...good, value: flipped }]);
  seen.api_with_changed_cookie = await api('/app/data');
  await context.addCookies([good]);
  seen.api_with_restored_cookie = await api('/app/data');

  // Logout: the session ends here and at the provider (its confirmation form).
  await page.goto(`${gateway}/logout`);
  seen.logout_at = page.url();
  const confirm = page.locator('button[autofocus], button[type=submit]').first();
  if (await confirm.count()) await confirm.click();
  await page.waitForLoadState();
  seen.after_logout_cookies = (await context.cookies(gateway)).map((c) => c.name);
  seen.api_after_logout = await api('/app/data');
  await page.goto(`${gateway}/app/page`);
  seen.page_after_logout_at = page.url();
} catch (e) {
  seen.error = String(e.stack ?? e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
