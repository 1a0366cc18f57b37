/** Headless Chromium for browser tests: Debian's `chromium` driven by playwright-core. */
import * as Fs from "node:fs"

export const chromiumPath = process.env.QUICKIM_CHROMIUM ?? "/usr/bin/chromium"

/** Whether Chromium is installed (`.ci/run` installs it; tests needing it are skipped without). */
export const hasChromium = Fs.existsSync(chromiumPath)

export const launchChromium = async () => {
  const { chromium } = await import("playwright-core")
  return chromium.launch({
    executablePath: chromiumPath,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
  })
}
