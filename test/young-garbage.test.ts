/**
 * What sends in flight leave to V8's young-generation collections. A long-lived `Set` that each
 * send's wait goes through keeps every entry it held reachable until the next full collection, so
 * all that a send holds was promoted and piled up in the old generation (src/storage/Waiters.ts).
 * Checked in fresh processes against a control that churns a plain `Set` the same way.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as Path from "node:path"
import { Buckets } from "../src/access/RateLimits.ts"
import { Waiters } from "../src/storage/Waiters.ts"
import { denoBin, root } from "./support/process.ts"

const probe = Path.join(root, "test/fixtures/young-garbage-probe.ts")
const run = (...args: Array<string>) =>
  JSON.parse(
    execFileSync(denoBin, ["run", "-A", "--v8-flags=--expose-gc", probe, ...args], {
      cwd: root,
      encoding: "utf8",
      env: process.env
    }).trim()
  ) as { promoted: number; payloads: number }

describe("young garbage", () => {
  it("sends waiting on DatabaseHealth leave what they hold to the young generation", () => {
    const control = run("--set")
    expect(control.promoted).toBeGreaterThan(control.payloads / 2)
    const waiters = run()
    expect(waiters.promoted).toBeLessThan(waiters.payloads / 20)
  }, 60_000)

  it("Waiters: takes back once, calls each remaining callback once", () => {
    const waiters = new Waiters()
    const called: Array<string> = []
    const offA = waiters.add(() => called.push("a"))
    waiters.add(() => called.push("b"))
    const offC = waiters.add(() => called.push("c"))
    offA()
    offA()
    expect(waiters.size).toBe(2)
    waiters.callAll()
    expect(called.sort()).toEqual(["b", "c"])
    expect(waiters.size).toBe(0)
    offC()
    waiters.callAll()
    expect(called.length).toBe(2)
  })

  it("rate buckets: a key seen again moves back at most once a second; the least recently moved is forgotten first", () => {
    // One token each, refilled too slowly to matter: 0 means a fresh (or forgotten) key.
    const buckets = new Buckets({ perSecond: 0.001, burst: 1 }, 2)
    expect(buckets.take("a", 0)).toBe(0)
    expect(buckets.take("b", 10)).toBe(0)
    expect(buckets.take("a", 500)).toBeGreaterThan(0) // known, and within the second: keeps its place
    expect(buckets.take("c", 600)).toBe(0) // forgets the first in order: "a"
    expect(buckets.take("a", 700)).toBe(0) // fresh again; forgets "b"
    expect(buckets.size).toBe(2)
    expect(buckets.take("a", 1800)).toBeGreaterThan(0) // a second later: moves behind "c"
    expect(buckets.take("d", 1900)).toBe(0) // forgets "c", not "a"
    expect(buckets.take("a", 1950)).toBeGreaterThan(0)
    expect(buckets.size).toBe(2)
  })
})
