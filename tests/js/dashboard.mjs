// An operator looking at Pylon's dashboard in a real browser: Debian's Chromium driven by npm's
// playwright-core. `node dashboard.mjs ADMIN_URL TOKEN UPSTREAM TARGET SHOT_DIR`: prints one JSON
// object of what the page showed and what its buttons did, for tests/dashboard.rs to judge.
const root = process.env.PYLON_NODE_MODULES;
const { chromium } = await import(`${root}/playwright-core/index.mjs`);

const [admin, token, upstream, target, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/lib/chromium/chromium',
  args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
});
const seen = { console_errors: [] };
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') seen.console_errors.push(m.text()); });
  page.on('pageerror', (e) => seen.console_errors.push(String(e)));
  await page.goto(`${admin}/ui`);
  // Drawn, and the chart of the route with traffic has points.
  await page.waitForSelector('body[data-loaded]');
  await page.waitForFunction(() => [...document.querySelectorAll('svg[data-chart=requests]')]
    .some((c) => Number(c.dataset.points) > 0), null, { timeout: 20000 });

  seen.routes = await page.$$eval('tr[data-route]', (rows) => rows.map((r) => ({
    name: r.dataset.route,
    text: r.innerText,
    requests_points: Number(r.querySelector('svg[data-chart=requests]').dataset.points),
    p99_points: Number(r.querySelector('svg[data-chart=p99]').dataset.points),
  })));
  const targets = () => page.$$eval('tr[data-target]', (rows) => rows.map((r) => ({
    upstream: r.dataset.upstream, target: r.dataset.target, healthy: r.dataset.healthy === 'true',
    drained: r.dataset.drained === 'true', breaker: r.dataset.breaker,
    inflight: Number(r.dataset.inflight),
  })));
  seen.targets = await targets();
  seen.reloads = await page.$$eval('tr[data-reload]', (rows) => rows.map((r) => r.innerText));
  seen.caches = await page.$$eval('p[data-cache]', (rows) => rows.map((r) => r.innerText));
  seen.cache_tiers = await page.textContent('#caches p');
  seen.certificates = await page.$$eval('tr[data-certificate]', (rows) => rows.map((r) => ({
    name: r.dataset.certificate, state: r.dataset.state, text: r.innerText,
  })));
  const api = async () => (await context.request.get(`${admin}/upstreams`)).json();
  const button = `tr[data-upstream="${upstream}"][data-target="${target}"] button`;
  const drained = async () => (await api())[upstream].targets.find((t) => t.target === target).drained;

  // No token: the prompt is dismissed, nothing is sent.
  page.once('dialog', (d) => d.dismiss());
  await page.click(button);
  await page.waitForTimeout(500);
  seen.drained_without_token = await drained();
  // A wrong token: refused, said so on the page, nothing changed.
  page.once('dialog', (d) => d.accept('not-the-token'));
  await page.click(button);
  await page.waitForSelector('#problem:not([hidden])');
  seen.problem = await page.textContent('#problem');
  seen.drained_with_wrong_token = await drained();
  // The token: asked once, then the target drains and the page shows it.
  let asked = 0;
  page.on('dialog', (d) => { asked += 1; d.accept(token); });
  await page.click(button);
  await page.waitForSelector(`tr[data-upstream="${upstream}"][data-target="${target}"][data-drained=true]`);
  seen.drained_with_token = await drained();
  // Enabled again from the page without being asked again.
  await page.click(button);
  await page.waitForSelector(`tr[data-upstream="${upstream}"][data-target="${target}"][data-drained=false]`);
  seen.drained_after_enable = await drained();
  await page.click(button);
  await page.waitForSelector(`tr[data-upstream="${upstream}"][data-target="${target}"][data-drained=true]`);
  seen.token_asked = asked;
  seen.targets_after = await targets();
  await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  // A phone: the same page, nothing wider than the screen.
  const phone = await browser.newContext({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const small = await phone.newPage();
  await small.goto(`${admin}/ui`);
  await small.waitForSelector('body[data-loaded]');
  seen.phone_overflow = await small.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  seen.phone_routes = await small.$$eval('tr[data-route]', (rows) => rows.length);
  await small.screenshot({ path: `${shots}/dashboard-phone.png`, fullPage: true });
} catch (error) {
  seen.error = String(error);
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
