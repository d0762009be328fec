// Signing in, team-scoped lists, CSRF and signing out in real headless Chromium,
// against a standalone with `webserver.auth = "password"`. Run by
// crates/updraft/tests/cli/ui.rs:  node login.mjs <base url> <screenshot folder> <password>
import { launch, stepper } from "./updraft-steps.mjs";

const [base, shots, password] = process.argv.slice(2);
const browser = await launch();
const { step, failures } = stepper();

try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  await step("pages ask to sign in first", async () => {
    await page.goto(base + "/dags/daily_sales");
    if (!page.url().includes("/login")) throw new Error("at " + page.url());
    await shot("11-sign-in");
  });

  await step("a wrong password is refused without saying why", async () => {
    await page.fill('input[name="username"]', "alice");
    await page.fill('input[name="password"]', "not the password");
    await page.click('form.login button[type="submit"]');
    const text = await page.locator(".flash.error").textContent();
    if (!text.includes("Wrong username or password")) throw new Error(text);
  });

  await step("signing in returns to the page asked for, showing only the team's DAGs", async () => {
    await page.fill('input[name="username"]', "alice");
    await page.fill('input[name="password"]', password);
    await page.click('form.login button[type="submit"]');
    await page.waitForURL(/\/dags\/daily_sales/);
    await page.goto(base + "/");
    const dags = await page.locator("#dags tbody tr").evaluateAll((rows) => rows.map((row) => row.dataset.dag));
    if (dags.join(",") !== "daily_sales") throw new Error("listed: " + dags.join(","));
    const who = await page.locator("header .who").textContent();
    if (!who.includes("alice (user)")) throw new Error(who);
    const cookies = await context.cookies();
    const session = cookies.find((cookie) => cookie.name === "updraft_session");
    if (!session || !session.httpOnly || session.sameSite !== "Lax") throw new Error(JSON.stringify(session));
    await shot("12-signed-in");
  });

  await step("a form without its CSRF token changes nothing", async () => {
    const answer = await page.request.post(base + "/dags/daily_sales/paused", { form: { paused: "true" } });
    if (answer.status() !== 403) throw new Error("status " + answer.status());
    const dag = await (await page.request.get(base + "/api/v1/dags/daily_sales")).json();
    if (dag.is_paused) throw new Error("paused anyway");
  });

  await step("the paused toggle works with its token", async () => {
    await page.click('#dags tr[data-dag="daily_sales"] button.switch');
    await page.locator('#dags tr[data-dag="daily_sales"] button.switch.on').waitFor();
  });

  await step("an API token is made in the UI, shown once, and works with the user's teams", async () => {
    await page.click('header a:has-text("API tokens")');
    await page.fill('form.stacked input[name="name"]', "notebook");
    await page.selectOption('form.stacked select[name="scope"]', "read");
    await page.click('form.stacked button[type="submit"]');
    const token = (await page.locator("#new-token").textContent()).trim();
    await shot("13-token-shown-once");
    const answer = await fetch(base + "/api/v1/dags", { headers: { Authorization: "Bearer " + token } });
    const list = await answer.json();
    const ids = list.dags.map((dag) => dag.dag_id).join(",");
    if (answer.status !== 200 || ids !== "daily_sales") throw new Error(answer.status + " " + ids);
    await page.goto(base + "/tokens");
    if ((await page.content()).includes(token)) throw new Error("shown again");
  });

  await step("signing out ends the session", async () => {
    await page.click('header button:has-text("Sign out")');
    await page.waitForURL(/\/login/);
    await page.goto(base + "/");
    if (!page.url().includes("/login")) throw new Error("still in at " + page.url());
  });

  await step("an op stores a connection whose password never reaches the page", async () => {
    await page.goto(base + "/login");
    await page.fill('input[name="username"]', "olga");
    await page.fill('input[name="password"]', password);
    await page.click('form.login button[type="submit"]');
    await page.waitForURL((url) => !url.pathname.startsWith("/login"));
    await page.click('header a:has-text("Connections")');
    await page.fill('form.stacked input[name="conn_id"]', "warehouse");
    await page.fill('form.stacked input[name="conn_type"]', "postgres");
    await page.fill('form.stacked input[name="host"]', "db.internal");
    await page.fill('form.stacked input[name="login"]', "loader");
    await page.fill('form.stacked input[name="password"]', "browser-pw-1357");
    await page.click('form.stacked button[type="submit"]');
    await page.locator('.flash:has-text("Connection warehouse saved")').waitFor();
    const html = await page.content();
    if (!html.includes("db.internal")) throw new Error("not listed");
    if (html.includes("browser-pw-1357")) throw new Error("the password is in the page");
    await shot("14-connections");
  });
} finally {
  await browser.close();
}
process.exit(failures.length ? 1 : 0);
