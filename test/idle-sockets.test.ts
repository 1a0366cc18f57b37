/**
 * The connection watch of the HTTP listeners (`watchConnections`: QUICKIM_HTTP_HEADERS_TIMEOUT,
 * QUICKIM_HTTP_REQUEST_TIMEOUT, QUICKIM_HTTP_IDLE_TIMEOUT) on a plain node:http server over real
 * sockets: slow heads and bodies get 408 and are closed, a connection that moves no byte while its
 * request is served is closed, and busy or kept-alive connections are left alone.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import * as Net from "node:net"
import { watchConnections } from "../src/server/ConnectionWatch.ts"
import { sleep } from "./support/push.ts"

describe("connection timeouts", () => {
  let server: Server
  let port = 0
  beforeAll(async () => {
    server = createServer((request, response) => {
      if (request.url === "/silent") return // never answered
      if (request.url === "/trickle") {
        response.writeHead(200, { "content-type": "text/plain" })
        const trickle = setInterval(() => response.write("."), 100)
        response.on("close", () => clearInterval(trickle))
        return
      }
      request.resume()
      request.on("end", () => response.end("ok"))
    })
    watchConnections(server, { headersMs: 1_000, requestMs: 1_500, idleMs: 2_500 })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    port = (server.address() as AddressInfo).port
  })
  afterAll(() => new Promise((resolve) => server.close(resolve)))

  const open = (first?: string) => {
    const socket = Net.connect(port, "127.0.0.1")
    const state = { closed: false, received: "" }
    socket.on("error", () => {})
    socket.on("close", () => (state.closed = true))
    socket.on("data", (d) => (state.received += d.toString("latin1")))
    if (first !== undefined) socket.on("connect", () => socket.write(first))
    return { socket, state }
  }
  const closed = async (state: { closed: boolean }) => {
    for (let i = 0; i < 200 && !state.closed; i++) await sleep(50)
    return state.closed
  }

  it("a request served without a byte either way is cut after the idle timeout; a trickling one is not", async () => {
    const silent = open("GET /silent HTTP/1.1\r\nHost: x\r\n\r\n")
    const busy = open("GET /trickle HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.isTrue(await closed(silent.state), "the silent connection was closed")
    assert.strictEqual(silent.state.received, "")
    const before = busy.state.received.length
    await sleep(2_500)
    assert.isFalse(busy.state.closed, "the connection that moves bytes stays open")
    assert.isAbove(busy.state.received.length, before)
    busy.socket.destroy()
  }, 30_000)

  it("a first head that does not complete gets 408 and is closed; so is a connection that sends nothing", async () => {
    const partial = open("GET /x HTTP/1.1\r\nHost: x\r\n")
    const nothing = open()
    assert.isTrue(await closed(partial.state))
    assert.match(partial.state.received, /^HTTP\/1\.1 408/)
    assert.isTrue(await closed(nothing.state))
  }, 30_000)

  it("a body that does not arrive in time gets 408 and is closed", async () => {
    const slow = open("POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab")
    assert.isTrue(await closed(slow.state))
    assert.match(slow.state.received, /^HTTP\/1\.1 408/)
  }, 30_000)

  it("a kept-alive connection making requests stays open past every timeout", async () => {
    const client = open()
    await new Promise((resolve) => client.socket.once("connect", resolve))
    for (let i = 0; i < 20; i++) {
      const before = client.state.received.length
      client.socket.write("GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
      for (let j = 0; j < 100 && client.state.received.length === before; j++) await sleep(10)
      await sleep(150)
    }
    assert.isFalse(client.state.closed)
    assert.strictEqual(client.state.received.split("HTTP/1.1 200").length - 1, 20)
    client.socket.destroy()
  }, 30_000)
})
