/**
 * The rooms of `src/` (docs/architecture.md): each folder imports only from folders below it, so
 * no folder imports a folder that imports it back, and the node-to-node link knows no entity.
 */
import { assert, describe, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"

const SRC = Path.join(import.meta.dirname!, "..", "src")

const sourceFiles = (dir: string): Array<string> =>
  Fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sourceFiles(Path.join(dir, e.name)) : e.name.endsWith(".ts") ? [Path.join(dir, e.name)] : []
  )

/** Every `from "./…"` import of every source file, as folder → folder (files at the top are their own room). */
const folderImports = () => {
  const edges = new Map<string, Set<string>>()
  const roomOf = (file: string) => {
    const rel = Path.relative(SRC, file)
    return rel.includes(Path.sep) ? rel.split(Path.sep)[0] + "/" : rel
  }
  for (const file of sourceFiles(SRC)) {
    const from = roomOf(file)
    for (const match of Fs.readFileSync(file, "utf8").matchAll(/(?:from|import)\s*\(?\s*"(\.[^"]+)"/g)) {
      const to = roomOf(Path.resolve(Path.dirname(file), match[1]))
      if (to === from) continue
      if (!edges.has(from)) edges.set(from, new Set())
      edges.get(from)!.add(to)
    }
  }
  return edges
}

describe("architecture", () => {
  const edges = folderImports()

  it("no folder of src/ imports a folder that imports it back, however far round", () => {
    const cycles: Array<string> = []
    const reaches = (from: string, to: string, seen = new Set<string>()): boolean => {
      for (const next of edges.get(from) ?? []) {
        if (next === to) return true
        if (!seen.has(next) && (seen.add(next), reaches(next, to, seen))) return true
      }
      return false
    }
    for (const [from, tos] of edges) {
      if (!from.endsWith("/")) continue
      for (const to of tos) if (to.endsWith("/") && reaches(to, from)) cycles.push(`${from} → ${to} → … → ${from}`)
    }
    assert.deepStrictEqual(cycles, [])
  })

  it("the node-to-node link, storage and the contract stay below what they carry", () => {
    const above = (folder: string, ...forbidden: Array<string>) =>
      [...(edges.get(folder) ?? [])].filter((to) => forbidden.includes(to)).map((to) => `${folder} → ${to}`)
    assert.deepStrictEqual([
      ...above("cluster/", "conversation/", "push/", "server/"),
      ...above("storage/", "server/", "access/", "push/", "conversation/", "cluster/"),
      ...above("api/", "server/", "storage/", "push/", "conversation/", "cluster/", "access/"),
      ...above("domain/", "server/", "storage/", "push/", "conversation/", "cluster/", "access/", "api/")
    ], [])
  })

  it("src/ imports each Effect module by its own path, never a package's index", () => {
    // An index loads every module it re-exports: @effect/platform-node's loads its Redis client
    // (about 620 modules), effect's and its areas' every module. What a node loads stays in its heap,
    // and V8 lets the heap grow to a multiple of what is live before collecting (bench/RESULTS.md).
    const barrel = /from\s+"(effect|effect\/[a-z-]+|@effect\/[a-z-]+)"/g
    const found = sourceFiles(SRC).flatMap((file) =>
      [...Fs.readFileSync(file, "utf8").matchAll(barrel)].map((m) => `${Path.relative(SRC, file)}: ${m[1]}`)
    )
    assert.deepStrictEqual(found, [])
  })
})
