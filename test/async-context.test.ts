/**
 * src/NoFiberAsyncContext.ts keeps Effect's fibers from capturing an AsyncResource at every
 * suspension (under Deno those captures form a chain that is never collected). Checked in fresh
 * processes on both runtimes, against a control run without it.
 */
import { describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { denoBin, root } from "./support/process.ts"

const probe = Path.join(root, "test/fixtures/async-context-probe.ts")
const runtimes = [
  { name: "deno", bin: denoBin, args: ["run", "-A", probe] },
  { name: "node 22", bin: Path.join(root, "node_modules/node22/bin/node"), args: [probe] }
].filter((r) => Fs.existsSync(r.bin))
const run = (bin: string, args: Array<string>) =>
  JSON.parse(execFileSync(bin, args, { cwd: root, encoding: "utf8" }).trim()) as { created: number; restored: boolean }

describe("fiber async context", () => {
  for (const { name, bin, args } of runtimes) {
    it(`${name}: no AsyncResource per suspension once the entry point's first import ran`, () => {
      const control = run(bin, args)
      expect(control.created).toBeGreaterThanOrEqual(200)
      const booted = run(bin, [...args, "--boot"])
      expect(booted.created).toBe(0)
      expect(booted.restored).toBe(true)
    })
  }
  it("the entry point imports it before anything else", () => {
    const main = Fs.readFileSync(Path.join(root, "src/main.ts"), "utf8")
    const firstImport = main.split("\n").find((line) => line.startsWith("import "))
    expect(firstImport).toContain("./NoFiberAsyncContext.ts")
  })
})
