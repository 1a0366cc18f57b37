/**
 * Imported first by the entry point, before any module of `effect` is evaluated.
 *
 * Effect's fibers capture a `node:async_hooks` AsyncResource each time they suspend, so that
 * AsyncLocalStorage values follow them across suspensions. quick-im reads no AsyncLocalStorage,
 * and under Deno every captured resource stays reachable from the next one: on the send path a few
 * kilobytes retained per request, a heap that never stops growing and long full-GC pauses
 * (docs/operations.md, "Runtimes"). Under Node it costs CPU on every suspension.
 * Effect looks the class up once, while its module is evaluated, through
 * `process.getBuiltinModule`; until `restore` is called that lookup finds no async_hooks.
 */
const original = process.getBuiltinModule
const hidden = new Set(["node:async_hooks", "async_hooks"])

if (typeof original === "function") {
  process.getBuiltinModule = ((id: string) =>
    hidden.has(id) ? undefined : original.call(process, id)) as typeof original
}

/** Puts the lookup back; call once the entry point's imports are evaluated. */
export const restore = () => {
  if (typeof original === "function") process.getBuiltinModule = original
}
