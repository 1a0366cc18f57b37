/**
 * The V8 settings a quick-im node runs with: `npm start`, `deno task start` and the `quick-im`
 * command (package.json, deno.json and the first line of src/main.ts spell them out;
 * test/runtime-flags.test.ts checks that they agree), cluster/launch.ts, and the tests and
 * benchmarks that start nodes. Under Node, pass the same flags to `node`.
 *
 * - `--max-old-space-size=1536`: the JavaScript heap's old generation may hold at most 1.5 GB. V8
 *   sizes the garbage it lets pile up between full collections by that limit: with its default on
 *   a machine of 16 GB or more (4 GB) up to 4 times what was live at the last full collection, with
 *   1.5 GB about 1.8 times. Over 80,000 sends the node peaked at 209–212 MB against 323–327 MB
 *   (bench/RESULTS.md, "A bounded heap"). It is also a ceiling: a node whose live heap reaches it
 *   stops ("heap limit"); one meant for more than about 100,000 connections, or tens of thousands
 *   of busy conversations at once, raises it.
 * - `--no-allocation-site-pretenuring`: V8 otherwise starts allocating an allocation site's objects
 *   directly in the old generation once most of them survive a young collection. Under load it did
 *   so on the send path, and each such object kept what it pointed to (a send's rows, its answer)
 *   alive through young collections until the next full one: the old generation grew 0.9 MB per
 *   young collection without it against 4.5 MB with it (embedded, same build, single runs).
 */
export const V8_FLAGS: ReadonlyArray<string> = ["--max-old-space-size=1536", "--no-allocation-site-pretenuring"]

/** `V8_FLAGS` as Deno takes them on its command line. */
export const denoV8Flags = `--v8-flags=${V8_FLAGS.join(",")}`
