// The console in a real browser (docs/console.md): Debian's chromium driven
// headless by playwright-core (never a downloaded browser). It runs the
// repository's moat.json under `moat up` on free ports, then: logs in, sees
// every service on the map, kills one and sees it go red then green, places
// an order in the storefront and follows it to confirmed in the saga view
// and its trace, and redrives a dead letter.
//
//   node console.test.mjs --moat BUILD/bin/moat --source SRC [--screenshots DIR]
//                         [--deployment deploy/social.json] [--plain yes]
//
// With the social deployment (no orders service) it tries the social page
// instead of the storefront, sagas and dead letters. The deployment files
// say "tls": true; --plain runs the deployment without TLS (plain HTTP on
// every hop, the console too).
//
// Test builds only (MOAT_TEST_HOOKS): the dead letter is search's poison
// product hook. Every wait is on a condition, with generous timeouts.
import { spawn } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import nodeHttp from "node:http";
import https from "node:https";
import tls from "node:tls";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { chromium } from "playwright-core";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => (a.startsWith("--") ? [...acc, [a.slice(2), all[i + 1]]] : acc), []));
const MOAT = path.resolve(args.moat);
const SOURCE = path.resolve(args.source);
const DEPLOYMENT = args.deployment || "moat.json"; // relative to --source
const SHOTS = args.screenshots ? path.resolve(args.screenshots) : null;
const CHROMIUM = process.env.MOAT_CHROMIUM || "/usr/bin/chromium";
const started = Date.now();
let out = ""; // moat up's output, shown when the test fails
let page = null; // its screenshot too (failure.png, with --screenshots)

function log(...m) { console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s]`, ...m); }
function check(cond, what) { if (!cond) throw new Error("check failed: " + what); }

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const p = s.address().port; s.close(() => resolve(p)); });
    s.on("error", reject);
  });
}

async function waitUntil(what, fn, timeoutMs = 30000, everyMs = 200) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    let v;
    try { v = await fn(); } catch (e) { v = undefined; }
    if (v) return v;
    if (Date.now() > end) throw new Error("timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

// The deployment file with every 127.0.0.1:PORT moved to a free port.
async function writeDeployment(dir) {
  let text = fs.readFileSync(path.join(SOURCE, DEPLOYMENT), "utf8");
  const ports = [...new Set([...text.matchAll(/127\.0\.0\.1:(\d+)/g)].map((m) => m[1]))];
  const map = {};
  for (const p of ports) map[p] = await freePort();
  text = text.replace(/127\.0\.0\.1:(\d+)/g, (_, p) => `127.0.0.1:${map[p]}`);
  const d = JSON.parse(text);
  d.var_dir = path.join(dir, "var");
  if (args.plain) d.tls = false;
  const file = path.join(dir, "moat.json");
  fs.writeFileSync(file, JSON.stringify(d, null, 2));
  return { file, deployment: d };
}

// A service token as the operator (cli/util.c cli_operator_header): HS256
// with the pair key HMAC-SHA256("moat-pair-key:" + callee) under the
// operator's key. Only for the test hook that "deploys the fix".
function operatorToken(secrets, audience) {
  const key = Buffer.from(secrets.service_keys.operator, "base64");
  const pair = crypto.createHmac("sha256", key).update("moat-pair-key:" + audience).digest();
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ iss: "operator", sub: "operator", aud: audience, iat: now, exp: now + 60, usr: "operator", role: "admin" });
  const sig = crypto.createHmac("sha256", pair).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

// With "tls": true every hop is HTTPS from the deployment CA
// (docs/security.md): the test trusts only that CA and presents the
// operator's certificate, which the services' test hooks require with the
// operator's token (the gateway and the console ask for none).
let tlsOptions = null; // { ca, cert, key } once moat up has issued them

function http(method, url, body, headers) {
  const u = new URL(url);
  const payload = body ? JSON.stringify(body) : null;
  const options = Object.assign({ method, headers: Object.assign(payload ? { "content-type": "application/json" } : {}, headers || {}) },
    u.protocol === "https:" ? tlsOptions : {});
  return new Promise((resolve, reject) => {
    const req = (u.protocol === "https:" ? https : nodeHttp).request(u, options, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (c) => { text += c; });
      res.on("end", () => {
        let data = text;
        try { data = JSON.parse(text); } catch (e) { /* text */ }
        resolve({ status: res.statusCode, data });
      });
      res.on("error", reject);
    });
    req.on("error", reject);
    req.end(payload);
  });
}

// The console's certificate, verified against the deployment CA (the
// handshake fails otherwise): the base64 SHA-256 of its public key
// (SubjectPublicKeyInfo), as chromium's --ignore-certificate-errors-spki-list
// takes it.
function verifiedSpki(consoleUrl) {
  const u = new URL(consoleUrl);
  return new Promise((resolve, reject) => {
    const sock = tls.connect({ host: u.hostname, port: Number(u.port), ca: tlsOptions.ca }, () => {
      const der = sock.getPeerCertificate().raw;
      sock.end();
      const spki = new crypto.X509Certificate(der).publicKey.export({ type: "spki", format: "der" });
      resolve(crypto.createHash("sha256").update(spki).digest("base64"));
    });
    sock.on("error", reject);
  });
}

// The social page against deploy/social.json: Ann signs up on the page,
// follows Bob, sees his post on her timeline, posts, asks her degree of
// connection to him and writes to him.
async function socialFlow(page, consoleUrl, gw, tag, shot) {
  const bobEmail = `bob-${tag.toLowerCase()}@example.com`;
  // users answers 503 while too many password hashes are queued (a busy
  // machine): try again.
  const bobReg = await waitUntil("Bob's registration", async () => {
    const r = await http("POST", gw + "/api/v1/users", { email: bobEmail, password: "correct horse battery", display_name: "Bob" });
    return r.status === 503 ? null : r;
  }, 30000, 1000);
  check(bobReg.status === 201, "bob signs up " + bobReg.status);
  const bob = await http("POST", gw + "/api/v1/auth/login", { email: bobEmail, password: "correct horse battery" });
  const bobId = bob.data.user.id;
  const posted = await http("POST", gw + "/api/v1/posts", { text: `hello from Bob ${tag}` }, { authorization: "Bearer " + bob.data.access_token });
  check(posted.status === 201, "bob posts " + posted.status);

  await page.goto(consoleUrl + "#/social");
  await page.fill('#account input[name=email]', `ann-${tag.toLowerCase()}@example.com`);
  await page.fill('#account input[name=password]', "correct horse battery");
  await page.fill('#account input[name=display_name]', "Ann");
  await page.click("#signup");
  await page.locator("#timeline").waitFor();
  await page.fill("#follow input[name=user]", bobId);
  await page.click("#follow button");
  await page.locator("#social-out", { hasText: "followee_id" }).waitFor();
  await waitUntil("Bob's post on Ann's timeline", async () => {
    await page.click("#refresh-timeline");
    return (await page.locator("#timeline", { hasText: `hello from Bob ${tag}` }).count()) > 0;
  }, 30000, 500);
  await page.fill("#post input[name=text]", `hello from Ann ${tag}`);
  await page.click("#post button");
  await page.locator("#timeline", { hasText: `hello from Ann ${tag}` }).waitFor();
  await page.fill("#degree input[name=user]", bobId);
  await page.click("#degree button");
  await page.locator("#social-out", { hasText: "degree" }).waitFor();
  await page.fill("#message input[name=user]", bobId);
  await page.fill("#message input[name=text]", `hi Bob ${tag}`);
  await page.click("#message button");
  await page.locator("#social-out", { hasText: `hi Bob ${tag}` }).waitFor();
  log("social: followed, timeline, posted, degree, conversation");
  await shot("social");
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moat-console-"));
  const { file, deployment } = await writeDeployment(dir);
  // Each service's base URL as moat up reports it (https:// with TLS).
  let urls = null;
  const url = (name) => urls[name];
  log("moat up", file);
  const up = spawn(MOAT, ["up", "-f", file], { stdio: ["ignore", "pipe", "pipe"] });
  up.stdout.on("data", (b) => { out += b; });
  up.stderr.on("data", (b) => { out += b; });
  let browser = null;
  try {
    const consoleUrl = await waitUntil("moat up to print the console's URL",
      () => (/console: (https?:\/\/\S+)/.exec(out) || [])[1], 90000);
    const secrets = JSON.parse(fs.readFileSync(path.join(dir, "var", "secrets.json"), "utf8"));
    urls = Object.fromEntries(JSON.parse(fs.readFileSync(path.join(dir, "var", "moat.state"), "utf8"))
      .services.map((s) => [s.name, s.url]));
    const certs = path.join(dir, "var", "certs");
    const secure = consoleUrl.startsWith("https:");
    check(secure === (deployment.tls === true), "the console serves " + consoleUrl);
    const read = (f) => fs.readFileSync(path.join(certs, f));
    if (secure) tlsOptions = { ca: read("ca.crt"), cert: read("operator.crt"), key: read("operator.key") };
    const gw = url("gateway");
    const social = !deployment.services.some((s) => s.name === "orders");
    const tag = crypto.randomBytes(3).toString("hex").toUpperCase();
    let poison = null;

    // The shop's data, as its admin, through the gateway.
    if (!social) {
    const admin = await http("POST", gw + "/api/v1/auth/login", { email: "admin@moat.local", password: secrets.shared.MOAT_USERS_ADMIN_PASSWORD });
    check(admin.status === 200, "admin login " + admin.status);
    const auth = { authorization: "Bearer " + admin.data.access_token };
    const mug = await http("POST", gw + "/api/v1/products", { sku: `MUG-${tag}`, name: "Blue mug", price: { amount: 1250, currency: "EUR" } }, auth);
    check(mug.status === 201, "product " + JSON.stringify(mug.data));
    const stock = await http("PUT", gw + `/api/v1/stock/MUG-${tag}`, { on_hand: 10, reason: "delivery" }, auth);
    check(stock.status === 200 || stock.status === 201, "stock " + JSON.stringify(stock.data));
    poison = await http("POST", gw + "/api/v1/products", { sku: `POISON-${tag}`, name: "Poisoned teapot", price: { amount: 999, currency: "EUR" } }, auth);
    check(poison.status === 201, "poison product");
    }

    // The console serves HTTPS with a certificate from the deployment's own
    // CA, which no browser trusts. Chromium cannot be handed a CA without
    // the system's certificate store, and the console presents its leaf
    // only: the test checks that leaf against the CA and has chromium
    // accept exactly its key, and no other certificate error (the flag is
    // honoured with a --user-data-dir, which Playwright always passes).
    const trusted = secure ? [await verifiedSpki(consoleUrl)] : [];
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true,
      args: ["--no-sandbox", ...(secure ? ["--ignore-certificate-errors-spki-list=" + trusted.join(",")] : [])] });
    page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.setDefaultTimeout(30000);
    const shot = async (name, fullPage = true) => { if (SHOTS) await page.screenshot({ path: path.join(SHOTS, name + ".png"), fullPage }); };

    // Log in.
    await page.goto(consoleUrl);
    await page.locator("#login").waitFor();
    await page.fill("#password", "not the password");
    await page.click("#login button[type=submit]");
    await page.locator("#login-error", { hasText: "Wrong password" }).waitFor();
    await page.fill("#password", secrets.shared.MOAT_CONSOLE_PASSWORD);
    await page.click("#login button[type=submit]");
    await page.locator("#nav").waitFor();
    log("logged in");

    // Every service of the deployment on the map, up.
    for (const s of deployment.services)
      await page.locator(`g.svc[data-service="${s.name}"][data-health="ready"]`).waitFor();
    await page.locator(social ? 'g[data-feed="posts->timelines"]' : 'g[data-feed="catalog->search"]').waitFor();
    log("map: all", deployment.services.length, "services up");
    await shot(social ? "map-social" : "map");

    if (social) {
      await socialFlow(page, consoleUrl, gw, tag, shot);
      log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      return;
    }

    // Kill one: red within about a second, green once the supervisor has
    // brought it back.
    const state = JSON.parse(fs.readFileSync(path.join(dir, "var", "moat.state"), "utf8"));
    const victim = state.services.find((s) => s.name === "notifications");
    const killedAt = Date.now();
    process.kill(victim.pid, "SIGKILL");
    await page.locator('g.svc[data-service="notifications"][data-health="down"]').waitFor({ timeout: 5000 });
    const redMs = Date.now() - killedAt;
    log(`killed notifications: red after ${redMs} ms`);
    await page.locator('g.svc[data-service="notifications"][data-health="ready"]').waitFor({ timeout: 30000 });
    log("notifications: green again");

    // The storefront: sign up, find the mug, order it, watch it confirm.
    await page.goto(consoleUrl + "#/shop");
    await page.locator(`.product[data-sku="MUG-${tag}"]`).waitFor();
    await page.fill('#account input[name=email]', `ann-${tag.toLowerCase()}@example.com`);
    await page.fill('#account input[name=password]', "correct horse battery");
    await page.fill('#account input[name=display_name]', "Ann");
    await page.click("#signup");
    await page.locator("#customer").waitFor();
    await page.locator(`.product[data-sku="MUG-${tag}"]`).waitFor();
    await page.fill("#shop-search", "mug");
    await page.click("form.row button[type=submit]");
    await waitUntil("search to find the mug", async () => {
      if (await page.locator(`.product[data-sku="MUG-${tag}"]`).count()) return true;
      await page.click("form.row button[type=submit]");
      return false;
    }, 20000, 500);
    await page.locator(`.product[data-sku="MUG-${tag}"] button.order`).click();
    await page.locator("#placed-status", { hasText: "confirmed" }).waitFor({ timeout: 30000 });
    const orderId = await page.locator("#placed").getAttribute("data-order");
    log("order", orderId, "confirmed in the storefront");
    await shot("storefront");

    // The saga view: the order, its steps, its trace.
    await page.goto(consoleUrl + "#/sagas?status=confirmed");
    await page.locator(`#sagas tr[data-order="${orderId}"]`).waitFor();
    await shot("sagas");
    await page.click(`#sagas tr[data-order="${orderId}"] a[href^="#/order/"]`);
    await page.locator("#order-status", { hasText: "confirmed" }).waitFor();
    for (const type of ["ReserveStock", "StockReserved", "OrderConfirmed"])
      await page.locator(`#steps tr[data-type="${type}"]`).first().waitFor();
    await shot("order");
    await page.click("#order-trace");
    await page.locator("#waterfall").waitFor();
    for (const svc of ["gateway", "orders", "inventory", "payments"])
      await page.locator(`#waterfall .wf-row[data-service="${svc}"]`).first().waitFor();
    log("trace spans gateway, orders, inventory and payments");
    await shot("trace");

    // A dead letter: search parks the poison product after 3 attempts.
    await waitUntil("search's dead letter", async () => {
      await page.goto(consoleUrl + "#/events/search");
      await page.locator("#dead-letters, #no-dead-letters").first().waitFor();
      return (await page.locator(`#dead-letters tr[data-subject="${poison.data.id}"]`).count()) > 0;
    }, 30000, 1000);
    // "Deploy the fix" (the test hook), then redrive from the page.
    const healed = await http("POST", url("search") + "/_test/heal", null, { "Moat-Service-Token": operatorToken(secrets, "search") });
    check(healed.status === 200, "heal " + healed.status);
    await page.click(`#dead-letters tr[data-subject="${poison.data.id}"] button.redrive`);
    await page.locator(".redrive-result", { hasText: "applied 1" }).waitFor();
    await page.click("#verify");
    await page.locator("#verify-result", { hasText: "identical" }).waitFor();
    log("dead letter redriven; replay verified");
    await shot("dead-letters");
    await page.goto(consoleUrl + "#/events/orders");
    await page.locator("#feed td", { hasText: "OrderConfirmed" }).first().waitFor();
    check(!(await page.content()).includes(`ann-${tag.toLowerCase()}@example.com`), "the feed shows no email");
    await shot("events");

    // The audit, run from the page by the supervisor, after a "bug" (orders'
    // test hook) changed the confirmed order's total behind its back: the
    // violation links to the order.
    const broken = await http("POST", url("orders") + `/v1/test/orders/${orderId}`, { total: 9999 },
      { "Moat-Service-Token": operatorToken(secrets, "orders") });
    check(broken.status === 200, "orders' test hook " + broken.status);
    await page.goto(consoleUrl + "#/audit");
    await page.click("#run-audit");
    await page.locator("#audit-summary", { hasText: "violation" }).waitFor({ timeout: 60000 });
    log("audit:", await page.locator("#audit-summary").textContent());
    await shot("audit");
    await page.click(`#violations a[href="#/order/${orderId}"]`);
    await page.locator("#order-status").waitFor();

    await page.goto(consoleUrl + "#/traces");
    await page.locator("table a[href^='#/trace/']").first().waitFor();
    await shot("traces", false);

    // Nothing but the login answers without the operator's session.
    const anon = await http("GET", consoleUrl.replace(/\/$/, "") + "/api/svc/orders/v1/orders");
    check(anon.status === 401, "anonymous /api/svc is " + anon.status);
    const anonGw = await http("GET", consoleUrl.replace(/\/$/, "") + "/api/gw/products");
    check(anonGw.status === 401, "anonymous /api/gw is " + anonGw.status);
    // Guessing the password: after 5 wrong ones, one try per second.
    const login = consoleUrl.replace(/\/$/, "") + "/api/login";
    for (let i = 0; i < 5; i++)
      check((await http("POST", login, { password: "guess" + i })).status === 401, "wrong password " + i);
    check((await http("POST", login, { password: "guess5" })).status === 429, "the 6th guess at once is refused");
    log(`passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } catch (e) {
    for (const f of ["audit.json.tmp", "audit.json", "audit.request"]) {
      const p = path.join(dir, "var", "console", f);
      if (fs.existsSync(p)) console.log(f + ":", fs.readFileSync(p, "utf8").slice(0, 2000));
    }
    if (page && SHOTS) await page.screenshot({ path: path.join(SHOTS, "failure.png"), fullPage: true }).catch(() => {});
    throw e;
  } finally {
    if (browser) await browser.close();
    up.kill("SIGTERM");
    await new Promise((r) => up.on("exit", r));
    // Every service stops cleanly (under ASan: without a leak).
    const unclean = [...out.matchAll(/(\S+): stopped \((.*)\)/g)].filter((m) => m[2] !== "exit status 0");
    if (unclean.length && !process.exitCode) {
      console.error("FAIL: unclean stops: " + unclean.map((m) => `${m[1]} ${m[2]}`).join(", "));
      process.exitCode = 1;
    }
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(out.split("\n").slice(-40).join("\n"));
  console.error("FAIL:", e.message);
  process.exitCode = 1;
});
