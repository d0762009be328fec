// The web UI in real headless Chromium (playwright-core, /usr/bin/chromium):
// the DAG list, a trigger, the grid turning green, a task's log, the other
// views, and pausing. Run by crates/updraft/tests/cli/ui.rs:
//   node browser.mjs <base url> <screenshot folder>
import { launch, stepper } from "./updraft-steps.mjs";

const [base, shots] = process.argv.slice(2);
const browser = await launch();
const { step, failures } = stepper();

try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("console", (message) => { if (message.type() === "error") errors.push(message.text()); });
  const shot = (name) => page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });

  await step("the DAG list shows the example DAGs", async () => {
    await page.goto(base + "/");
    await page.locator('#dags tr[data-dag="daily_sales"]').waitFor();
    const count = await page.locator("#dags tbody tr").count();
    if (count < 3) throw new Error(`${count} DAGs listed`);
    await shot("01-dag-list");
  });

  await step("search filters the list", async () => {
    await page.fill('input[name="q"]', "listings");
    await page.click('form[role="search"] button');
    await page.locator('#dags tr[data-dag="public_listings"]').waitFor();
    const count = await page.locator("#dags tbody tr").count();
    if (count !== 1) throw new Error(`${count} rows after searching`);
    await page.goto(base + "/");
  });

  let runId = "";
  await step("a DAG is triggered from the list, with a params form", async () => {
    await page.click('#dags tr[data-dag="daily_sales"] a:has-text("Trigger")');
    await page.locator("form#trigger").waitFor();
    await shot("02-trigger-form");
    await page.click('form#trigger button[type="submit"]');
    const note = await page.locator(".flash").textContent();
    if (!note.includes("Triggered run")) throw new Error("no confirmation: " + note);
    runId = note.replace(/.*Triggered run /, "").trim();
  });

  await step("the grid turns green by itself", async () => {
    await page.waitForFunction((run) => {
      const head = document.querySelector(`#grid .runhead[data-run="${run}"]`);
      return head && head.dataset.state === "success";
    }, runId, { timeout: 60000, polling: 250 });
    const cells = await page.locator("#grid a.cell").count();
    if (cells === 0) throw new Error("no cells");
    await shot("03-grid-green");
  });

  await step("a task's log opens from the grid", async () => {
    await page.click(`#grid a.cell[href*="${encodeURIComponent(runId)}"][data-task="load"]`);
    await page.locator("#log").waitFor();
    const log = await page.locator("#log").textContent();
    if (!log.includes("loaded total")) throw new Error("log: " + log.slice(0, 200));
    const rendered = await page.locator("#rendered").textContent();
    if (!rendered.includes("sales_by_day.csv")) throw new Error("rendered: " + rendered.slice(0, 200));
    await shot("04-task-log");
  });

  await step("graph, code, run history and the run's Gantt render", async () => {
    await page.goto(base + "/dags/daily_sales?tab=graph");
    await page.locator('#graph g[data-task="load"]').waitFor();
    await shot("05-graph");
    await page.goto(base + "/dags/daily_sales?tab=code");
    const code = await page.locator("#code").textContent();
    if (!code.includes("dag: daily_sales")) throw new Error("code: " + code.slice(0, 100));
    await shot("06-code");
    await page.goto(base + "/dags/daily_sales?tab=runs");
    await page.locator("#durations rect").first().waitFor();
    await shot("07-run-history");
    await page.goto(base + "/dags/daily_sales/runs/" + encodeURIComponent(runId));
    await page.locator("#gantt rect").first().waitFor();
    await shot("08-run-gantt");
  });

  await step("a DAG is paused from the list", async () => {
    await page.goto(base + "/");
    await page.click('#dags tr[data-dag="daily_sales"] button.switch');
    await page.locator('#dags tr[data-dag="daily_sales"] button.switch.on').waitFor();
    const dag = await (await fetch(base + "/api/v1/dags/daily_sales")).json();
    if (dag.is_paused !== true) throw new Error("the API says is_paused = " + dag.is_paused);
    await shot("09-paused");
  });

  await step("the list reads on a phone", async () => {
    const phone = await browser.newPage({ viewport: { width: 390, height: 844 } });
    await phone.goto(base + "/");
    await phone.locator("#dags").waitFor();
    const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    await phone.screenshot({ path: `${shots}/10-phone.png`, fullPage: true });
    if (overflow > 40) throw new Error(`the page is ${overflow}px wider than the phone`);
  });

  if (errors.length) {
    failures.push("script errors");
    console.log("FAIL script errors in the pages: " + errors.join(" | "));
  }
} finally {
  await browser.close();
}
process.exit(failures.length ? 1 : 0);
