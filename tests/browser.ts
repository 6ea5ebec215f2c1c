// Pages in a real browser: headless Chromium (Debian's, or LORAKIT_CHROMIUM) loads a page, a script added
// to a copy of it reads what the browser laid out and computed (sizes, styles) into the DOM it dumps, and a
// screenshot of the page itself is written beside it.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { tmpDir } from "./helpers.js";

const CHROMIUM = process.env.LORAKIT_CHROMIUM ?? "/usr/bin/chromium";

export function chromium(args: string[]): string {
  if (!existsSync(CHROMIUM))
    throw new Error(
      `no Chromium at ${CHROMIUM}: install Debian's chromium (apt-get install chromium), as .ci/run does`,
    );
  const r = spawnSync(
    CHROMIUM,
    [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--user-data-dir=${tmpDir("lorakit-chromium-")}`,
      ...args,
    ],
    { encoding: "utf8", timeout: 60_000 },
  );
  if (r.status !== 0) throw new Error(`chromium failed: ${r.stderr}`);
  return r.stdout;
}

/**
 * Loads `file` at a `width`-pixel window and returns what `probe` (a JavaScript expression evaluated in the
 * page once it is laid out) gives, as JSON; the page itself runs no script. A screenshot goes to `file`.png.
 */
export function probePage<T>(file: string, probe: string, width = 1400): { value: T; screenshot: string } {
  const copy = file.replace(/\.html$/, ".probe.html");
  const script = `<script>
const out = document.createElement("pre");
out.id = "probe";
out.textContent = JSON.stringify((() => (${probe}))());
document.body.append(out);
</script>`;
  writeFileSync(copy, readFileSync(file, "utf8").replace("</body>", `${script}</body>`));
  const dom = chromium([`--window-size=${width},1000`, "--dump-dom", `file://${copy}`]);
  const m = /<pre id="probe">([^<]*)<\/pre>/.exec(dom);
  if (!m) throw new Error(`the probe did not run in ${copy}`);
  const text = (m[1] as string)
    .replace(/&quot;/g, '"')
    .replace(/&lt;/g, "<")
    .replace(/&gt;/g, ">")
    .replace(/&amp;/g, "&");
  const screenshot = file.replace(/\.html$/, ".png");
  chromium([`--screenshot=${screenshot}`, `--window-size=${width},1600`, "--hide-scrollbars", `file://${file}`]);
  return { value: JSON.parse(text) as T, screenshot };
}
