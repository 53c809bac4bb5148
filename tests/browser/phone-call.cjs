// The web phone in a real browser: two contexts of headless Chromium open
// the provisioning links `client-config --format uri` printed for users A
// and B (the PBX serves the page), both register, A calls B, B answers,
// audio flows both ways (fake microphones; getStats counters through the
// page's window.phone.stats()), A hangs up and B sees the call end. Writes
// a screenshot of A in the call and prints one line: WPBX-RESULT {json}.
//
//   PLAYWRIGHT=dir CHROMIUM=path node phone-call.cjs LINK_A LINK_B B_USER SHOT CHROMIUM_ARGS...
'use strict';
const { chromium } = require(process.env.PLAYWRIGHT);

const [linkA, linkB, userB, shot, ...chromiumArgs] = process.argv.slice(2);
const t0 = Date.now();
const ms = () => Date.now() - t0;

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: [
      '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream',
      '--autoplay-policy=no-user-gesture-required',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
      ...chromiumArgs,
    ],
  });
  const open = async (link) => {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 480, height: 640 } });
    await context.grantPermissions(['microphone']);
    const page = await context.newPage();
    page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.error(`[page] ${m.text()}`); });
    page.on('pageerror', (e) => console.error(`[page error] ${e}`));
    await page.goto(link);
    return page;
  };
  const result = { timings: {} };
  let a = null, b = null;
  try {
    [a, b] = await Promise.all([open(linkA), open(linkB)]);
    result.timings.pagesLoaded = ms();
    // The links fill in and register; the credentials leave the address bar.
    await Promise.all([a, b].map((p) => p.locator('#state', { hasText: 'Registered as' }).waitFor({ timeout: 15000 })));
    result.timings.registered = ms();
    result.addressBar = a.url();
    await a.fill('#target', userB);
    // A user added a moment ago is in pjsip before it is in the dialplan
    // (the kubelet updates the Secret and ConfigMap volumes apart, up to a
    // minute late): a call that fails (404) is placed again, as a person would.
    result.attempts = 0;
    const seen = (locator) => locator.waitFor({ timeout: 10000 }).then(() => true, () => false);
    for (;;) {
      result.attempts += 1;
      await a.click('#call');
      const outcome = await Promise.race([
        seen(b.locator('#answer:visible')).then((v) => (v ? 'ringing' : 'timeout')),
        seen(a.locator('#callstate', { hasText: 'Failed' })).then((v) => (v ? 'failed' : 'timeout')),
      ]);
      if (outcome === 'ringing') break;
      result.lastFailure = await a.textContent('#callstate');
      if (!(await a.isDisabled('#hangup'))) await a.click('#hangup');
      if (ms() > 120000) throw new Error(`no call reached B: ${result.lastFailure}`);
      await a.waitForTimeout(3000);
    }
    result.timings.ringing = ms();
    await b.click('#answer');
    await Promise.all([a, b].map((p) => p.locator('#callstate', { hasText: 'In call' }).waitFor({ timeout: 10000 })));
    result.timings.answered = ms();
    await a.waitForTimeout(4000);
    result.a = await a.evaluate(() => window.phone.stats());
    result.b = await b.evaluate(() => window.phone.stats());
    result.micLevel = await a.$eval('#mic', (m) => m.value);
    result.speakerLevel = await a.$eval('#speaker', (m) => m.value);
    await a.screenshot({ path: shot });
    await a.click('#hangup');
    await b.locator('#callstate', { hasText: 'Call ended' }).waitFor({ timeout: 10000 });
    result.timings.hungUp = ms();
    result.bAfter = await b.evaluate(() => window.phone.stats());
    result.ok = true;
  } catch (e) {
    result.ok = false;
    result.error = String(e);
    for (const [side, page] of [['a', a], ['b', b]]) {
      if (page) result[side + 'Shown'] = await page.textContent('main').catch((x) => String(x));
    }
  } finally {
    await browser.close();
  }
  console.log('WPBX-RESULT ' + JSON.stringify(result));
}

main();
