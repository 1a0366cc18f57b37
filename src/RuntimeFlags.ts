/**
 * The V8 settings a quick-im node runs with: `npm start`, `deno task start` and the `quick-im`
 * command (package.json, deno.json and the first line of src/main.ts spell them out;
 * test/runtime-flags.test.ts checks that they agree), cluster/launch.ts, and the tests and
 * benchmarks that start nodes. Under Node, pass the same flags to `node`.
 *
 * - `--max-old-space-size=1536`: the JavaScript heap's old generation may hold at most 1.5 GB. V8
 *   sizes the garbage it lets pile up between full collections by that limit: with its default
 *   on a machine of 16 GB or more (4 GB) it lets the old generation grow to 4 times what was live
 *   at the last full collection, with 1.5 GB to about 1.8 times. A node under a steady send load
 *   peaked at 322 MB against 212 MB (bench/RESULTS.md, "A bounded heap"); it is V8's own default
 *   on a machine with 6 GB of memory. A node that needs more (past about 100,000 connections, or
 *   tens of thousands of busy conversations at once) raises it: it stops with "heap limit" when
 *   what is live reaches it.
 * - `--no-allocation-site-pretenuring`: V8 otherwise starts allocating objects of an allocation
 *   site directly in the old generation once most of them survived a young collection. Under load
 *   it did so for sites of the send path, and each such object kept what it pointed to (the send's
 *   rows, its answer) through young collections until the next full one: about 3 times as much
 *   promoted per send, at no measured gain in CPU.
 */
export const V8_FLAGS: ReadonlyArray<string> = ["--max-old-space-size=1536", "--no-allocation-site-pretenuring"]

/** `V8_FLAGS` as Deno takes them on its command line. */
export const denoV8Flags = `--v8-flags=${V8_FLAGS.join(",")}`
