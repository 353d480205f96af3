// Debian's Chromium as every browser suite and the browser benchmark start
// it (CHROMIUM_BIN overrides /usr/bin/chromium). Without the
// background-networking flags Chromium keeps trying to reach its own
// services, and a closed network refuses its connections.
import { chromium } from 'playwright-core'

export const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium'
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync']

/** A headless Chromium (playwright-core's `Browser`). */
export function launchChromium () {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS })
}
