/**
 * Every way of starting a node runs V8 with the same settings (src/RuntimeFlags.ts): `npm start`,
 * `deno task start` and the `quick-im` command spell them out, and a node started so reports the
 * heap limit they set.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { denoV8Flags } from "../src/RuntimeFlags.ts"
import { heapLimitMb, root, spawnServer } from "./support/process.ts"
import { tempDir } from "./support/server.ts"

const read = (file: string) => Fs.readFileSync(Path.join(root, file), "utf8")

describe("runtime flags", () => {
  it("npm start, deno task start and the quick-im command pass them", () => {
    expect(JSON.parse(read("package.json")).scripts.start).toBe(`deno run -A ${denoV8Flags} src/main.ts`)
    expect(JSON.parse(read("deno.json")).tasks.start).toBe(`deno run -A ${denoV8Flags} src/main.ts`)
    expect(read("src/main.ts").split("\n")[0]).toBe(`#!/usr/bin/env -S deno run -A ${denoV8Flags}`)
  })

  it("a node started with them reports a JavaScript heap limit of 1.5 GB (V8's default here: more)", async () => {
    const server = await spawnServer({ env: { QUICKIM_DATA_DIR: tempDir() } })
    try {
      const limit = await heapLimitMb(server)
      // The old generation's 1,536 MB and the young generation's share.
      expect(limit).toBeGreaterThanOrEqual(1536)
      expect(limit).toBeLessThan(1800)
    } finally {
      await server.stop()
    }
  })
})
