/**
 * `divert` (src/NodeServer.ts) hands the requests it takes to our own code before the platform's
 * listeners. A platform release that adds a second `request` listener (effect 4.1.5 adds one
 * answering 503 while no handler is attached) must not make a request taken twice: a `send_msg`
 * taken twice was stored twice. And the platform removing its listener must remove it.
 */
import * as Http from "node:http"
import { assert, describe, it } from "@effect/vitest"
import { divert } from "../src/NodeServer.ts"

const listen = (server: Http.Server) =>
  new Promise<string>((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${(server.address() as any).port}`))
  )

describe("divert", () => {
  it("takes each request once however many listeners follow, and leaves the rest to each of them", async () => {
    const server = Http.createServer()
    const taken: Array<string> = []
    divert(server, "request", (request: Http.IncomingMessage, response: Http.ServerResponse) => {
      if (request.url !== "/taken") return false
      taken.push(request.url)
      response.end("taken")
      return true
    })
    const seen: Array<string> = []
    // As the platform does: one listener that answers only while it is alone, then the handler.
    const unavailable = (request: Http.IncomingMessage, response: Http.ServerResponse) => {
      seen.push(`unavailable ${request.url}`)
      if (server.listenerCount("request") > 1) return
      response.end("unavailable")
    }
    const handler = (request: Http.IncomingMessage, response: Http.ServerResponse) => {
      seen.push(`handler ${request.url}`)
      response.end("handled")
    }
    server.on("request", unavailable)
    server.on("request", handler)
    const url = await listen(server)
    try {
      assert.strictEqual(await (await fetch(`${url}/taken`)).text(), "taken")
      assert.strictEqual(await (await fetch(`${url}/other`)).text(), "handled")
      assert.deepStrictEqual(taken, ["/taken"])
      assert.deepStrictEqual(seen, ["unavailable /other", "handler /other"])

      // The platform stopping its handler: what it removes is gone.
      server.off("request", handler)
      assert.strictEqual(server.listenerCount("request"), 1)
      assert.strictEqual(await (await fetch(`${url}/other`)).text(), "unavailable")
      assert.strictEqual(await (await fetch(`${url}/taken`)).text(), "taken")
      assert.deepStrictEqual(taken, ["/taken", "/taken"])
      server.removeListener("request", unavailable)
      assert.strictEqual(server.listenerCount("request"), 0)
    } finally {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    }
  })
})
