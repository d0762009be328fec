// What the browser scripts share: a headless Chromium (the system's, never a
// downloaded one) and named steps that report `ok`/`FAIL` and keep going.
import { chromium } from "playwright-core";

export function launch() {
  return chromium.launch({
    executablePath: process.env.UPDRAFT_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
  });
}

export function stepper() {
  const failures = [];
  const step = async (name, body) => {
    try {
      await body();
      console.log("ok   " + name);
    } catch (error) {
      failures.push(name);
      console.log("FAIL " + name + ": " + error.message.split("\n")[0]);
    }
  };
  return { step, failures };
}
