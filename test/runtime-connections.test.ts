/**
 * `keepRequestsOnSockets` (src/server/RuntimeConnections.ts): under Deno the runtime's `node:http`
 * tracks each request in a long-lived `Map`, which kept every request, and what its handler held,
 * reachable for young collections until the next full one. The record moves onto the socket: what
 * requests hold goes with the young generation again, and the runtime's own header and request
 * timeouts still close what they closed.
 */
import { assert, describe, expect, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import * as Http from "node:http"
import * as Net from "node:net"
import * as Path from "node:path"
import { keepRequestsOnSockets } from "../src/server/RuntimeConnections.ts"
import { denoBin, root } from "./support/process.ts"

const isDeno = "Deno" in globalThis

const probe = (...args: Array<string>) =>
  JSON.parse(
    execFileSync(denoBin, [
      "run",
      "-A",
      "--v8-flags=--expose-gc",
      Path.join(root, "test/fixtures/request-garbage-probe.ts"),
      ...args
    ], {
      cwd: root,
      encoding: "utf8",
      env: process.env
    }).trim()
  ) as { promoted: number; payloads: number; applied: boolean }

/** A server with the runtime's timeouts short enough to watch, and the change applied. */
const start = async () => {
  const server = Http.createServer({ headersTimeout: 150, requestTimeout: 300, connectionsCheckingInterval: 25 }, (
    request,
    response
  ) => {
    request.resume()
    request.on("end", () => response.end("ok"))
  })
  let applied = false
  keepRequestsOnSockets(server, (done) => (applied = done))
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return { server, applied, port: (server.address() as Net.AddressInfo).port }
}

/** A raw connection: what it was sent back, and whether the server closed it. */
const connect = (port: number) => {
  const socket = Net.connect(port, "127.0.0.1")
  const state = { received: "", closed: false }
  socket.setEncoding("latin1")
  socket.on("data", (chunk: string) => (state.received += chunk))
  socket.on("close", () => (state.closed = true))
  socket.on("error", () => {})
  return { socket, state }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

describe.skipIf(!isDeno)("the runtime's connection list, on each socket", () => {
  it("requests leave what their handlers hold to the young generation (the runtime's list: promoted)", () => {
    const control = probe("--runtime-list")
    expect(control.applied).toBe(false)
    expect(control.promoted).toBeGreaterThan(control.payloads / 10)
    const fixed = probe()
    expect(fixed.applied).toBe(true)
    expect(fixed.promoted).toBeLessThan(fixed.payloads / 16)
  }, 60_000)

  /** What `sent` leaves unfinished is answered 408 and closed by the runtime's own check. */
  const closedWith408 = async (sent: string) => {
    const { server, applied, port } = await start()
    try {
      assert.isTrue(applied)
      const { socket, state } = connect(port)
      socket.write(sent)
      for (let i = 0; i < 100 && !state.closed; i++) await sleep(20)
      expect(state.closed).toBe(true)
      expect(state.received).toMatch(/^HTTP\/1\.1 408/)
    } finally {
      server.close()
      server.closeAllConnections()
    }
  }

  it("a head that never completes is still closed by the runtime's headers timeout", () =>
    closedWith408("GET / HTTP/1.1\r\nHost: x\r\n"))

  it("a body that stops arriving is closed by the runtime's request timeout", () =>
    closedWith408("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc"))

  it("a kept-alive connection between requests is not an expired request", async () => {
    const { server, port } = await start()
    try {
      const { socket, state } = connect(port)
      socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      for (let i = 0; i < 50 && !state.received.endsWith("ok"); i++) await sleep(10)
      expect(state.received).toMatch(/^HTTP\/1\.1 200[\s\S]*ok$/)
      // Past both timeouts since that request began, with none in progress.
      await sleep(500)
      expect(state.closed).toBe(false)
      socket.write("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
      for (let i = 0; i < 50 && (state.received.match(/ok/g) ?? []).length < 2; i++) await sleep(10)
      expect((state.received.match(/HTTP\/1\.1 200/g) ?? []).length).toBe(2)
      socket.end()
    } finally {
      server.close()
      server.closeAllConnections()
    }
  })
})
