// Drives tollgate's dashboard in headless Chromium, as an operator would:
// logs in with the admin token, watches license `demo`'s in-use count rise
// while a load runs and fall after, revokes `demo` from the page and sees
// the next call refused, and checks that the viewer token cannot revoke
// (the admin API answers 403 to it, not just a hidden button). Saves
// screenshots; fails on any JavaScript error the page logs.
//
// Usage: node dashboard.mjs BASE_URL ADMIN_TOKEN VIEWER_TOKEN SCREENSHOT_DIR LICENSE_FILE
// (LICENSE_FILE: a second grant of `demo`, 3 seats, for the page to install)
// Talks to the test that started it on stdout/stdin: prints "LOAD" when
// the page shows the license, and waits for "LOADED" back once the load
// is running.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, adminToken, viewerToken, shots, licenseFile] = process.argv.slice(2);
if (!licenseFile) {
  console.error("usage: node dashboard.mjs BASE_URL ADMIN_TOKEN VIEWER_TOKEN SCREENSHOT_DIR LICENSE_FILE");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });

const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (line) => waiting.shift()?.(line.trim()));
const nextLine = () => new Promise((resolve) => waiting.push(resolve));

function check(ok, what) {
  if (!ok) throw new Error(`failed: ${what}`);
  console.error(`ok: ${what}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking"],
});
const errors = [];
function watch(page, who) {
  page.on("pageerror", (e) => errors.push(`${who}: ${e.message}`));
  page.on("console", (m) => {
    if (m.type() === "error") errors.push(`${who}: console: ${m.text()}`);
  });
}

try {
  // The admin logs in.
  const admin = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await admin.newPage();
  watch(page, "admin");
  await page.goto(`${base}/ui/`);
  check(page.url().endsWith("/ui/login"), "not logged in: sent to the login page");
  await page.screenshot({ path: join(shots, "login.png") });
  await page.fill("#token", adminToken);
  await Promise.all([page.waitForURL(`${base}/ui/`), page.click("button[type=submit]")]);
  const inUse = page.locator('#licenses tr[data-license="demo"] td.in-use');
  await inUse.waitFor();
  check((await page.textContent("#role")) === "admin", "logged in as admin");
  await page.locator("#audit", { hasText: "Verified" }).waitFor({ timeout: 10000 });
  check((await page.locator("#grants tbody tr").count()) === 1, "the license's grant is listed");
  check((await inUse.textContent()) === "0", "no seat in use before the load");
  let navigations = 0;
  page.on("framenavigated", () => navigations++);

  // A load runs: the count rises without a reload, then falls.
  console.log("LOAD");
  check((await nextLine()) === "LOADED", "the test started the load");
  const rose = Date.now();
  await page.waitForFunction(
    () => Number(document.querySelector('#licenses tr[data-license="demo"] td.in-use')?.textContent) > 0,
    null,
    { timeout: 2500 },
  );
  check(Date.now() - rose <= 2500, "the in-use count rose within 2 s of the load");
  await page.locator("#holders tbody tr td", { hasText: "slow" }).first().waitFor();
  await page.screenshot({ path: join(shots, "dashboard-under-load.png"), fullPage: true });
  await page.waitForFunction(
    () => document.querySelector('#licenses tr[data-license="demo"] td.in-use')?.textContent === "0",
    null,
    { timeout: 30000 },
  );
  check(navigations === 0, "the page updated without reloading");
  check(Number(await page.locator('#plugins tr[data-plugin="slow"] td').nth(1).textContent()) > 0,
    "the plugin table counts the calls");

  // The admin installs a second grant from a file, and reloads a plugin,
  // each after confirming.
  const confirmations = [];
  const accept = (d) => {
    confirmations.push(d.message());
    d.accept();
  };
  page.on("dialog", accept);
  await page.setInputFiles("#license-file", licenseFile);
  await page.click("#install button[type=submit]");
  await page.locator("#grants tbody tr").nth(1).waitFor();
  await page.waitForFunction(
    () => document.querySelector('#licenses tr[data-license="demo"] td.seats')?.textContent === "5",
  );
  check(confirmations.some((m) => m.startsWith("Install the license file")), "the installed grant adds its 3 seats, after a confirmation");
  const [reloaded] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith("/v1/admin/plugins/hello/reload")),
    page.click('#plugins tr[data-plugin="hello"] button'),
  ]);
  check(confirmations.some((m) => m.startsWith("Reload plugin hello")), "reloading asks for confirmation");
  check(reloaded.status() === 200, `the plugin reloaded (${reloaded.status()})`);
  page.off("dialog", accept);

  // The admin revokes demo from the page, confirming the dialog.
  let asked = "";
  page.once("dialog", (d) => {
    asked = d.message();
    d.accept();
  });
  await page.click('#licenses tr[data-license="demo"] button.revoke');
  check(asked.includes("Revoke license demo"), "the revoke asks for confirmation");
  await page.locator('#licenses tr[data-license="demo"]', { hasText: "revoked" }).waitFor();
  await page.screenshot({ path: join(shots, "revoked.png"), fullPage: true });
  const call = await fetch(`${base}/v1/plugins/hello/invoke`, { method: "POST", body: "after" });
  const refusal = await call.json();
  check(call.status === 403 && refusal.error === "revoked", `the next call is refused (${call.status} ${refusal.error})`);

  // The viewer sees everything and may change nothing.
  const viewer = await browser.newContext({ viewport: { width: 390, height: 844 } });
  const phone = await viewer.newPage();
  watch(phone, "viewer");
  await phone.goto(`${base}/ui/login`);
  await phone.fill("#token", viewerToken);
  await Promise.all([phone.waitForURL(`${base}/ui/`), phone.click("button[type=submit]")]);
  await phone.locator('#licenses tr[data-license="demo"]').waitFor();
  check((await phone.textContent("#role")) === "viewer", "logged in as viewer");
  check(!(await phone.locator("button.revoke").first().isVisible()), "the viewer sees no revoke button");
  await phone.screenshot({ path: join(shots, "viewer-phone.png"), fullPage: true });
  const revokeByViewer = await fetch(`${base}/v1/admin/licenses/demo/revoke`, {
    method: "POST",
    headers: { authorization: `Bearer ${viewerToken}` },
  });
  check(revokeByViewer.status === 403, `the admin API answers 403 to the viewer token (${revokeByViewer.status})`);
  // With the viewer's session cookie (the context's request API sends it)
  // and its CSRF token.
  const csrf = (await (await viewer.request.get(`${base}/ui/session`)).json()).csrf;
  const bySession = await viewer.request.post(`${base}/v1/admin/licenses/demo/revoke`, {
    headers: { "x-csrf-token": csrf },
  });
  check(bySession.status() === 403, "the viewer's session cannot revoke either");

  check(errors.length === 0, `no JavaScript errors (${errors.join("; ")})`);
  console.log("DONE");
} catch (e) {
  console.error(e.stack || String(e));
  if (errors.length) console.error(`page errors: ${errors.join("; ")}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
